"""
Publishing: turning a run folder into something others can use.

- `model_card`: the model cards, each a Jinja template rendered the same way (`model_card.md` for a pre-trained
  folder, `classifier_card.md` for a fine-tuned classifier), and their assets;
- `hub`: the publishable folder's files and the upload to the Hugging Face Hub;
- `export`: ONNX export of the encoder.

Imports run one way: `publish` imports `evaluation`, `train`, `data` and the Hub files; only the scripts import
`publish`.
"""
