"""
Evaluation: what a trained model is worth.

- `reconstruction`: masked-patch scores beside trivial predictors, and the reconstruction images and grids;
- `probe`: frozen-encoder features, the linear probe, k-NN and the raw-pixel baseline;
- `metrics`: the `evaluate` metric modules (masked-patch MSE, PSNR, mean attribute accuracy).

Imports run one way: `evaluation` imports `train`, `data` and the Hub files; `publish` and the scripts import
`evaluation`, never the reverse.
"""
