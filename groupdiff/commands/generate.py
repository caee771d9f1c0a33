"""``groupdiff generate``: ask a running server for images and write the PNGs, a contact sheet and metadata
(with ``--attention``, also each group's member-to-member attention mass: printed, and saved in metadata.json)."""

from __future__ import annotations

import argparse

from groupdiff.protocol.limits import GROUP_POLICIES


def add_request_arguments(parser: argparse.ArgumentParser) -> None:
    """The optional request fields, shared by generate and loadtest (unset: the server's defaults)."""
    parser.add_argument("--group-size", type=int, help="images generated jointly per group")
    parser.add_argument("--steps", type=int, help="sampling steps (a student serves only its distilled counts)")
    parser.add_argument("--guidance-scale", type=float, help="teacher only: v_c + s (v_c - v_u)")
    parser.add_argument("--group-policy", choices=GROUP_POLICIES,
                        help="isolated: groups hold this request's images only; shared: may join other requests'")


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", help="REST base URL (default http://127.0.0.1:3000) or, with --grpc / "
                                         "--triton-http, Triton host:port (default 127.0.0.1:8001 / 8000)")
    protocol = parser.add_mutually_exclusive_group()
    protocol.add_argument("--grpc", dest="protocol", action="store_const", const="grpc", default="rest",
                          help="call the Triton frontend over gRPC (KServe v2)")
    protocol.add_argument("--triton-http", dest="protocol", action="store_const", const="http",
                          help="call the Triton frontend over HTTP (KServe v2)")
    parser.add_argument("--token", help="bearer token (default $GROUPDIFF_API_TOKEN)")


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate images with a running server (REST or Triton gRPC)")
    condition = p.add_mutually_exclusive_group(required=True)
    condition.add_argument("--class", dest="class_id", type=int, help="class id: -n images of this class")
    condition.add_argument("--prompt", help="a text model's prompt: -n images of it (normalised and checked by the "
                                            "server; too long a prompt is refused, never truncated)")
    condition.add_argument("--classes", dest="class_ids", type=int, nargs="+", metavar="CLASS",
                           help="an image set: one image per class given, generated together as one group "
                                "(up to the model's group size), e.g. --classes 0 1 4 7")
    p.add_argument("-n", "--num-images", type=int, default=8, help="images of --class or --prompt (default 8)")
    p.add_argument("--out", required=True, help="folder for the PNGs, contact-sheet.png and metadata.json")
    add_server_arguments(p)
    add_request_arguments(p)
    p.add_argument("--seed", type=int, help="image i uses seed + i (default: drawn by the server)")
    p.add_argument("--timeout", type=float, dest="timeout_s", help="server deadline in seconds (REST)")
    p.add_argument("--retries", type=int, default=3, help="retries on 429/503 and refused connections")
    p.add_argument("--no-progress", action="store_true", help="REST: no per-step progress bar (no event stream)")
    p.add_argument("--attention", action="store_true",
                   help="also ask for each group's member-to-member attention mass (one extra forward per group; "
                        "needs a group size of at least 2): printed, and saved in metadata.json")
    p.set_defaults(run=run)


def request_options(args: argparse.Namespace) -> dict:
    return {"group_size": args.group_size, "steps": args.steps, "guidance_scale": args.guidance_scale,
            "group_policy": args.group_policy}


def connect(args: argparse.Namespace, retries: int):
    """The sync SDK client for the chosen protocol."""
    from groupdiff.clients.rest import GroupDiffClient, RetryPolicy
    from groupdiff.clients.triton import TritonClient

    retry = RetryPolicy(retries=retries)
    if args.protocol == "rest":
        return GroupDiffClient(args.server or "http://127.0.0.1:3000", token=args.token, retry=retry)
    return TritonClient(args.server, protocol=args.protocol, token=args.token, retry=retry)


def run(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from groupdiff.clients.errors import GroupDiffError, InvalidRequest
    from groupdiff.clients.results import GenerationResult

    if args.num_images < 1 or args.retries < 0:
        raise ValueError("-n must be at least 1 and --retries at least 0")
    options = {**request_options(args), "seed": args.seed, "return_attention": args.attention or None}
    try:
        with connect(args, args.retries) as client:
            if args.class_ids:  # an image set: one call, no progress stream
                timeout = {"timeout_s": args.timeout_s} if args.protocol == "rest" else {}
                result = client.generate_set(args.class_ids, **options, **timeout)
            elif args.protocol != "rest":
                result = client.generate(args.class_id, args.num_images, prompt=args.prompt, **options)
            elif args.no_progress:
                result = client.generate(args.class_id, args.num_images, prompt=args.prompt, **options,
                                         timeout_s=args.timeout_s)
            else:
                result, bar = None, None  # the bar opens with the first progress event, which knows the total
                for item in client.stream(args.class_id, args.num_images, prompt=args.prompt, **options,
                                          timeout_s=args.timeout_s):
                    if isinstance(item, GenerationResult):
                        result = item
                    else:
                        bar = bar or tqdm(total=item.steps, desc="sampling", unit="step")
                        bar.update(item.step - bar.n)
                if bar is not None:
                    bar.close()
                if result is None:
                    raise GroupDiffError("the stream ended without a result")
    except InvalidRequest as error:
        raise ValueError(f"the server refused the request: {error.message}") from None
    except GroupDiffError as error:
        raise SystemExit(f"groupdiff generate: error: {error}") from None
    paths = result.save(args.out)
    if args.attention:
        print(result.attention_table())
    print(f"wrote {len(result.images)} images and {paths[-1]} to {args.out} "
          f"(model {result.model_version or '?'}, seeds {result.images[0].seed}..{result.images[-1].seed}, "
          f"{result.latency_s:.2f} s)")
