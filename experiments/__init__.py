"""Research reproductions and diagnostics: the paper's quality tables at equal compute (`groupdiff bench quality`,
`quality-budget`), the distillation study (`groupdiff bench distill`) and the diagnostics run with ``python -m``
(guidance and distillation gaps, per-member FID, the GPU kit). Their results and lab notes are beside them in
experiments/results/ and experiments/notes/ (index: experiments/README.md); docs/results/README.md holds the
current headline numbers."""
