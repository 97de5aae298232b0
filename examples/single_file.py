"""The seed's single-file submission: one module with build_model and get_recipe.

Check it with `prism check examples/single_file.py`.
"""

import torch

from prism_challenge.evaluator.interface import TrainingRecipe


class MyModel(torch.nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab_size, 64)
        self.proj = torch.nn.Linear(64, vocab_size)

    def forward(self, tokens):
        return self.proj(self.emb(tokens))


def build_model(ctx):
    return MyModel(ctx.vocab_size)


def get_recipe(ctx):
    return TrainingRecipe(learning_rate=3e-4, batch_size=2)
