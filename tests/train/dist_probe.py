"""Run under torchrun or horovodrun with 2 ranks: checks a backend's collectives.

Each rank starts from different weights and optimizer state; after broadcast_state they must
match rank 0's. One step on rank-specific data must then apply the mean of the ranks'
gradients. Results go to <out>/probe-<rank>.json for the test to compare.
"""

import json
import sys

import torch

from tasks.train.dist import init_backend


def main(launcher: str, out: str) -> None:
    backend = init_backend(launcher)
    torch.manual_seed(100 + backend.rank)  # deliberately different on every rank
    model = torch.nn.Linear(4, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    forward, optimizer = backend.wrap(model, optimizer)
    # A rank-specific momentum buffer, as a resumed checkpoint would leave on rank 0.
    optimizer.state[model.weight]["momentum_buffer"] = torch.full((1, 4), backend.rank + 1.0)
    backend.broadcast_state(model, optimizer, resumed=True)
    after_broadcast = model.weight.detach().clone()
    momentum = optimizer.state[model.weight]["momentum_buffer"].clone()
    x = torch.full((1, 4), float(backend.rank + 1))  # rank r's gradient is (r + 1) * ones
    optimizer.zero_grad()
    forward(x).sum().backward()
    backend.synchronize(optimizer)
    grad = model.weight.grad.detach().clone()
    with backend.step_context(optimizer):
        optimizer.step()
    result = {"rank": backend.rank, "size": backend.size,
              "after_broadcast": after_broadcast.tolist(), "momentum": momentum.tolist(),
              "grad": grad.tolist(), "after_step": model.weight.detach().tolist(),
              "mean_of_ranks": backend.mean(float(backend.rank))}
    backend.close()
    with open(f"{out}/probe-{result['rank']}.json", "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
