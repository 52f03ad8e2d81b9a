"""The conditional VAE (PyTorch) and the graph that serves it (exported to ONNX).

Pixels are ink counts: scikit-learn's digits are 32x32 bitmaps summed over 4x4 blocks, so each of the 64 values
is a whole number of inked pixels out of 16. The decoder's likelihood says exactly that: every pixel is
Binomial(16, p) with p from the decoder. The ELBO is then a true lower bound of log p(image) in nats, which
makes the held-out ELBO a fair score to compare versions by (latent size and beta change what is learnt, not
what is measured).

Both halves see the image's digit (a conditional VAE): the decoder draws the digit it is told, and z holds only the
style. An image whose digit is not known is scored under each digit in turn by the runtime (runtime.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from aiaas.vision.data import MAX_INTENSITY

__all__ = ["ConditionalVAE", "ServingGraph", "CONDITIONS", "INPUT_NAMES", "OUTPUT_NAMES",
           "binomial_nll", "log_binomial_coefficients", "kl_divergence"]

CONDITIONS = 10
"""The digits 0..9."""
TRIALS = int(MAX_INTENSITY)
"""Inked pixels per 4x4 block: the Binomial's number of trials."""

INPUT_NAMES = ("image", "digit", "noise", "latent", "generate_digit")
"""Graph inputs: images [B, 8, 8] float32 (0..16), their digits [B] int64, the noise that draws z from
q(z | image) [B, L] (zeros: the posterior mean), latent points to decode [C, L], and their digits [C]."""
OUTPUT_NAMES = ("mean", "log_variance", "reconstruction", "reconstruction_nll", "kl", "generated")
"""Graph outputs: q's mean and log-variance [B, L], the decoded image [B, 8, 8] (0..16) and its negative
log-likelihood without the log binomial coefficients [B] (the runtime adds them), KL(q || N(0, I)) [B], and the
decoded latent points [C, 8, 8] (0..16)."""


class ConditionalVAE(nn.Module):
    """conv(32) → conv(64, stride 2) → dense(256) → (mean, log-variance) of `latent` numbers; the decoder mirrors it.
    Both halves see the digit as a one-hot vector."""

    one_hot: torch.Tensor

    def __init__(self, latent: int = 8) -> None:
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        )
        self.to_posterior = nn.Sequential(nn.Linear(64 * 16 + CONDITIONS, 256), nn.ReLU(), nn.Linear(256, 2 * latent))
        self.from_latent = nn.Sequential(nn.Linear(latent + CONDITIONS, 256), nn.ReLU(), nn.Linear(256, 64 * 16),
                                         nn.ReLU())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(32, 1, 3, padding=1),
        )
        self.register_buffer("one_hot", torch.eye(CONDITIONS), persistent=False)

    def encode(self, images: torch.Tensor, digits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | image, digit): mean and log-variance [B, latent], for raw (0..16) images [B, 8, 8]."""
        features = self.encoder(images[:, None] / MAX_INTENSITY)
        mean, log_variance = self.to_posterior(torch.cat([features, self.one_hot[digits]], 1)).chunk(2, dim=1)
        return mean, log_variance

    def decode_logits(self, latent: torch.Tensor, digits: torch.Tensor) -> torch.Tensor:
        """The logits of each pixel's ink probability [C, 8, 8]."""
        hidden = self.from_latent(torch.cat([latent, self.one_hot[digits]], 1))
        return self.decoder(hidden.reshape(-1, 64, 4, 4))[:, 0]

    def loss_terms(self, images: torch.Tensor, digits: torch.Tensor,
                   noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: the reconstruction's negative log-likelihood (nats, coefficients included) and the KL term,
        with z = mean + σ · noise (the reparameterisation: gradients flow through mean and σ)."""
        mean, log_variance = self.encode(images, digits)
        logits = self.decode_logits(mean + torch.exp(0.5 * log_variance) * noise, digits)
        nll = binomial_nll(images, logits) - log_binomial_coefficients(images)
        return nll, kl_divergence(mean, log_variance)


def binomial_nll(images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """-Σ [x log p + (16 - x) log(1 - p)] per image, from logits (softplus keeps it finite where p is near 0 or 1);
    the log binomial coefficients are left out (they do not depend on the model)."""
    return (images * F.softplus(-logits) + (TRIALS - images) * F.softplus(logits)).sum(dim=(1, 2))


def log_binomial_coefficients(images: torch.Tensor) -> torch.Tensor:
    """Σ log C(16, x) per image (lgamma, so an intensity between whole numbers still has one)."""
    lgamma = torch.lgamma
    return (math.lgamma(TRIALS + 1) - lgamma(images + 1) - lgamma(TRIALS - images + 1)).sum(dim=(1, 2))


def kl_divergence(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_variance)) || N(0, I)) per row, in nats (closed form)."""
    return 0.5 * (mean.pow(2) + log_variance.exp() - 1 - log_variance).sum(dim=1)


class ServingGraph(nn.Module):
    """Both routes of the service in one graph: images to encode (encode, reconstruct, anomaly_score) and latent
    points to decode (generate). The runtime feeds the route it does not need an empty batch."""

    def __init__(self, vae: ConditionalVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor, digit: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor,
                generate_digit: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The OUTPUT_NAMES, in order."""
        mean, log_variance = self.vae.encode(image, digit)
        logits = self.vae.decode_logits(mean + torch.exp(0.5 * log_variance) * noise, digit)
        kl = kl_divergence(mean, log_variance)
        generated = torch.sigmoid(self.vae.decode_logits(latent, generate_digit)) * MAX_INTENSITY
        return (mean, log_variance, torch.sigmoid(logits) * MAX_INTENSITY, binomial_nll(image, logits), kl,
                generated)
