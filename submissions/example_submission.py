"""An example submission: copy this file, rename it, and write your own unlearning().

The harness imports this file in a sandbox (no network; only /kaggle/tmp and /kaggle/working are
writable) and calls unlearning() once per run, each time on a fresh copy of the original model,
under a time cap of a fraction (0.2 by default) of what retraining from scratch takes on the same
hardware. The contract:

- net: the original model, already on the run's device (read it with next(net.parameters())
  .device), in train mode. Change it in place, or return a model: a returned nn.Module wins.
- retain_loader, forget_loader, val_loader: torch DataLoaders (batch 64, shuffled) whose batches
  are dicts: "image" (float32, N x C x H x W), "age_group" (the label, int64), "age",
  "image_id", "person_id". Set BATCH_FORMAT = "tuple" at module level to get (image, label)
  batches instead, as in the CIFAR-10 starting kit; a config may choose tuples too
  (configs/cifar10.yaml does), so this file reads either (images_and_labels below).
- Use only these four arguments: no files outside the scratch directories, no downloads.
- A loader's last batch holds a single example when its size is 1 more than a multiple of 64;
  in train mode BatchNorm fails on it (ResNet-18 at 32 px does), so skip it as below.

This one is the Kaggle starting kit's method: one epoch of fine-tuning on the retain set, which
forgets a little by catastrophic forgetting. Try it with `unlearn dry-run submissions/<file>.py`.
"""

from torch import nn, optim


def images_and_labels(batch):
    """A batch is a dict with Kaggle's keys, or an (image, label) pair under BATCH_FORMAT "tuple"."""
    if isinstance(batch, dict):
        return batch["image"], batch["age_group"]
    return batch[0], batch[1]


def unlearning(net, retain_loader, forget_loader, val_loader):
    device = next(net.parameters()).device
    epochs = 1
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4)
    scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)

    net.train()
    for _ in range(epochs):
        for batch in retain_loader:
            inputs, targets = images_and_labels(batch)
            inputs, targets = inputs.to(device), targets.to(device)
            if len(targets) < 2:  # a last batch of one example: BatchNorm cannot train on it
                continue
            optimizer.zero_grad()
            loss = criterion(net(inputs), targets)
            loss.backward()
            optimizer.step()
        scheduler.step()
    net.eval()
    return net
