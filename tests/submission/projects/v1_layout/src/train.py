# Training entrypoint: the recipe and hooks, written against the v1 batch attributes.
import torch
from layers import next_token_loss

from prism_challenge.evaluator.interface import PrismContext, TrainingRecipe


def recipe(ctx: PrismContext) -> TrainingRecipe:
    return TrainingRecipe(learning_rate=2e-3, batch_size=16, optimizer="adamw", scheduler="cosine")


def configure_optimizer(model, recipe, ctx):
    return torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.05)


def inference_logits(model, batch, ctx):
    return model(batch.tokens)


def compute_loss(model, batch, ctx):
    return next_token_loss(model(batch.tokens), batch.targets)


def train_step(model, batch, optimizer, ctx):
    optimizer.zero_grad(set_to_none=True)
    loss = compute_loss(model, batch, ctx)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss
