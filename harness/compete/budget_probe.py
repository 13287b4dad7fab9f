"""The fixed submission that measures run-time noise: a plain fine-tune that spends exactly the
time cap's budget (its `retain_epochs` over retain, by the recipe's optimiser).

Timing a run of the budget's own size, in sandboxes beside one another as scoring runs them, is
what tells how far an honest run's time strays on this machine; the runner folds the p99 of its
repeated runs into the cap, and scripts/budget_check.py dry-runs it (and a file over the budget)
to check that honest code passes and dearer code does not.
"""

from __future__ import annotations

from pathlib import Path

from harness.config import RecipeConfig

SOURCE = '''"""Fine-tune for {epochs:g} epochs of the recipe over retain: {share} the time cap's budget."""
import math

import torch
import torch.nn.functional as F

EPOCHS = {epochs!r}
LR = {lr!r}
WEIGHT_DECAY = {weight_decay!r}


def unlearning(net, retain_loader, forget_loader, val_loader):
    device = next(net.parameters()).device
    optimizer = torch.optim.Adam(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    batches = math.floor(EPOCHS * len(retain_loader))  # a fractional budget ends mid-epoch
    done = 0
    net.train()
    while done < batches:
        for batch in retain_loader:
            if done == batches:
                break
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(batch["image"].to(device)), batch["age_group"].to(device)).backward()
            optimizer.step()
            done += 1
    net.eval()
'''


def write_probe(folder: Path, epochs: float, recipe: RecipeConfig, *, share: str = "exactly") -> Path:
    """A fine-tune of `epochs` retain epochs by `recipe`'s optimiser, as a submission file in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("budget_probe_" + f"{epochs:g}".replace(".", "_") + "_epochs.py")
    path.write_text(SOURCE.format(epochs=float(epochs), share=share, lr=recipe.lr, weight_decay=recipe.weight_decay))
    return path
