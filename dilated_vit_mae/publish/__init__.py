"""
Publishing: turning a run folder into something others can use.

- `model_card`: the model card (a Jinja template, `model_card.md`) and its assets;
- `hub`: the publishable folder's files and the upload to the Hugging Face Hub;
- `export`: ONNX export of the encoder.

Imports run one way: `publish` imports `evaluation`, `train`, `data` and the Hub files; only the scripts import
`publish`.
"""
