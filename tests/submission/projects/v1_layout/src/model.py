# Architecture entrypoint: a small pre-norm decoder that sizes itself from the context.
import torch
from layers import Block, ScaleNorm
from torch import nn
from train import configure_optimizer, recipe  # v1 projects re-export training code here

from prism_challenge.evaluator.interface import PrismContext, TrainingRecipe

HEAD_WIDTH = 8


def choose_width(ctx: PrismContext, depth: int) -> int:
    width = HEAD_WIDTH
    while True:
        wider = width + HEAD_WIDTH
        params = ctx.vocab_size * wider + ctx.sequence_length * wider + depth * 7 * wider * wider
        if params > ctx.max_parameters or wider > 256:
            return width
        width = wider


class Decoder(nn.Module):
    def __init__(self, ctx: PrismContext) -> None:
        super().__init__()
        depth = min(2, ctx.max_layers)
        width = choose_width(ctx, depth)
        self.embed = nn.Embedding(ctx.vocab_size, width)
        self.position = nn.Embedding(ctx.sequence_length, width)
        self.blocks = nn.ModuleList(Block(width, width // HEAD_WIDTH) for _ in range(depth))
        self.norm = ScaleNorm(width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        places = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.position(places)
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.embed.weight.t()


def build_model(ctx: PrismContext) -> Decoder:
    return Decoder(ctx)


def get_recipe(ctx: PrismContext) -> TrainingRecipe:
    return recipe(ctx)


__all__ = ["build_model", "configure_optimizer", "get_recipe"]
