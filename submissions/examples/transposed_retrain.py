"""Transpose every convolution kernel, then train on retain: one of the 5th-place entry's two methods.

Source: the 5th-place solution of the NeurIPS 2023 Machine Unlearning Challenge (toshi-k and
marvelworld; write-up kaggle.com/competitions/neurips-2023-machine-unlearning/discussion/458531,
notebook marvelworld/toshi-k-rotate-and-marvel-pseudo-blend48-52; optimizer settings as the
deepunlearn benchmark copied them, xcadet/deepunlearn munl/unlearning/kgltop5.py). Its method (1),
"Retraining from transposed weights": "all weights in Conv2D are transposed both vertically and
horizontally" (kernel axes 2 and 3 swapped), then "the model is trained with the retain set for
3 epochs". Transposing keeps the features the original learned (it is like feeding it mirrored,
rotated images) while moving every memorised detail, so retraining converges fast and stably.
The entry blended this with a second method (fine-tuning on pseudo-labels chosen by hand-tuned
rules, "manually tuning some parameters"), running one method per model (246 + 266 of 512); this
file is method (1) alone, for every run.

Hyperparameters, published -> here: EPOCHS = 3 passes over retain (3); cross-entropy (the same);
SGD with LR = 1e-3 (1e-3), MOMENTUM = 0.9 (0.9), WEIGHT_DECAY = 5e-4 (5e-4);
CosineAnnealingLR(T_max=EPOCHS) stepped once per epoch (the same); batches of 64 (64).
Budget: the competition allowed 6 retain epochs at batch 64 per run (8 h for 512 runs on Kaggle's
GPU; its 2nd-place write-up measured "the max epoch could be maximized to 6"); this harness allows
the same 6, so the epoch count is the published one (scale 6 / 6 = 1).
Adaptation that is not a hyperparameter: a batch of a single example is skipped, because
BatchNorm cannot train on it.
Cost: 3.1 retain-epoch equivalents (default task, scripts/bench_baselines.py --files): EPOCHS
retain passes.
"""

import torch
import torch.nn.functional as F
from torch import nn

EPOCHS = 3
LR = 1e-3
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4


def unlearning(net, retain_loader, forget_loader, val_loader):
    device = next(net.parameters()).device
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.copy_(module.weight.transpose(2, 3).clone())

    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS)
    net.train()
    for _ in range(EPOCHS):
        for batch in retain_loader:
            images, labels = batch["image"].to(device), batch["age_group"].to(device)
            if len(labels) < 2:  # a last batch of one example: BatchNorm cannot train on it
                continue
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(images), labels).backward()
            optimizer.step()
        schedule.step()
    net.eval()
    return net
