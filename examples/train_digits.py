"""DDP training of a small network on scikit-learn's bundled digits (no download).

    nbscale run --procs-per-node 2 examples/train_digits.py -- --epochs 30

Each rank trains on its shard; gradients are averaged by DistributedDataParallel;
rank 0 prints the loss every epoch and the held-out accuracy at the end.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import nbscale
from nbscale import distributed


def data():
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    device = distributed.init()
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    x_train, x_test, y_train, y_test = data()
    train = TensorDataset(x_train, y_train)
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler)

    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
    ddp = DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        total = torch.zeros(2, device=device)
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad()
            loss = loss_fn(ddp(xb), yb)
            loss.backward()
            opt.step()
            total += torch.stack(
                [loss.detach() * len(xb), torch.tensor(float(len(xb)), device=device)]
            )
        dist.all_reduce(total)
        mean_loss = (total[0] / total[1]).item()
        nbscale.log_metric("loss", mean_loss, step=epoch)
        if rank == 0:
            print(f"epoch {epoch + 1:3d}/{args.epochs}  loss {mean_loss:.4f}", flush=True)

    if rank == 0:
        model.eval()
        with torch.no_grad():
            pred = model(x_test.to(device)).argmax(dim=1).cpu()
        accuracy = (pred == y_test).float().mean().item()
        nbscale.log_metric("accuracy", accuracy)
        print(
            f"accuracy {accuracy:.4f} on {len(y_test)} held-out digits (world size {world})",
            flush=True,
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
