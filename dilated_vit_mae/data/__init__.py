"""
Data: where images come from and how they become batches.

- `loading`: the sources (raw CelebA folders, image folders, Hub datasets, streams) as `datasets` splits;
- `transforms`: host-side augmentation (MAE's crops and flips, RandAugment, random erasing) and collators;
- `seeding`: the independent random streams (augmentation, training masks, evaluation masks) and the seeded
  per-image augmentation wrapper;
- `device_augment`: the same augmentation on the accelerator from uint8 crops;
- `decoded_cache`: a memory-mapped cache of decoded images; `fingerprint`: cache keys of image folders;
- `labels`: the label columns (CelebA's attributes by default), examples without a label, their encoding.

Imports run one way: `data` imports only the Hub files (`dilated_vit_mae`'s root) and itself; `train`,
`evaluation`, `publish` and the scripts import `data`, never the reverse.
"""
