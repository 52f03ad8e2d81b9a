"""VAE service: a conditional variational autoencoder on the 8x8 handwritten digits (scikit-learn's bundled set).

Entry point: `python -m aiaas.vae` (the service). Build the model: `aiaas models build vae`.
Topics: `aiaas.vae.infer` → `aiaas.vae.results`. `Job.task` picks the task:

- `generate`: inputs `n` (int, default 1), `digit` (int 0..9, optional: each image's digit drawn at random when
  left out), `seed` (int, optional: derived from the job id when left out, so a job sent again draws the same
  images). Outputs `images` float32 [n, 8, 8] (expected ink intensity 0..16), `digits` int64 [n] and `seed`.
- `encode`: input `image` [8, 8] (or [1, 8, 8]) 0..16 and `digit` (optional, when known). Outputs `mean` and
  `variance` float32 [latent size] (the approximate posterior q(z | image, digit)) and `digit`: the one given, or
  the most likely one (the highest ELBO of the ten).
- `reconstruct`: as `encode`; outputs `image` float32 [8, 8] (decoded from the posterior mean), `digit` and
  `reconstruction_nll` (nats).
- `anomaly_score`: as `encode`; outputs `score` (nats: the negative ELBO, z at the posterior mean, under the digit
  given, or of the mixture of the ten digits when none is; higher is less like the training digits), `anomalous`
  (score above the version's threshold for that kind of score, the 99th percentile of the held-out digits'),
  `digit`, and the most likely digit's `reconstruction_nll` and `kl` (nats).
"""

MODEL = "vae"

__all__ = ["MODEL"]
