"""Flax Linen modules: condition encoder, GRU generator, spectrally normalised Conv1D critic, LSTM
forecaster and the GRU real-vs-synthetic classifier of the discriminative score.

Shapes: B batch, H history days (30), T target days (7), F = 10 daily features (8 temporal:
day-of-week one-hot + is_weekend; 2 review: running mean rating, log review count), F_t = 8.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxlab.sales.data_windows import NUM_TEMPORAL

SPECTRAL = "spectral"  # variable collection of the power-iteration vectors


def spectral_dense(features: int, name: str) -> nn.Module:
    """Dense layer with weight W / sigma(W) (spectral normalisation, Miyato et al. 2018).

    `flax.linen.SpectralNorm` around `nn.Dense`: one power iteration per call, its vector u and
    the estimate sigma in the `spectral` collection, advanced with `update_stats=True` (pass
    `mutable=["spectral"]`); the gradient treats u and v as constants, as in the paper.
    """
    return nn.SpectralNorm(nn.Dense(features, name=name), collection_name=SPECTRAL)


def relu_with_gradient(x: jax.Array, slope: float = 0.1) -> jax.Array:
    """max(x, 0) forward, the gradient of leaky_relu(x, slope) backward.

    The generator's output must be >= 0 and may be exactly 0 (about 40% of the demo's target days
    sell nothing), which a softplus never reaches. A plain ReLU output, though, passes no gradient
    once a unit's pre-activation is negative for every window: when the critic pushes the level
    down early in training, the generator's output collapses to 0 and stays there (seen on the
    demo: fake_mean 0 and gen_grad_norm 0 from iteration ~150). The straight-through slope keeps
    the critic's "more" signal flowing to a zeroed output while the forward value is unchanged.
    """
    leaky = nn.leaky_relu(x, slope)
    return leaky + jax.lax.stop_gradient(nn.relu(x) - leaky)


def weekday_history(
    history_sales: jax.Array, history_features: jax.Array, target_features: jax.Array
) -> jax.Array:
    """Per target day, what the history says about that weekday: [B, T, 2].

    Channel 0 is the mean history sale on the target day's weekday (the seasonal-naive forecast),
    channel 1 that minus the history mean (the weekly offset). The weekly pattern is the strongest
    structure in daily retail sales; handing both networks this aligned summary lets the
    generator copy a product's weekly shape and lets the critic check it day by day, instead of
    each having to discover weekday arithmetic through an LSTM from a few hundred updates.
    history_sales [B, H], history_features [B, H, F >= 7], target_features [B, T, F_t >= 7]; the
    first 7 feature columns are the day-of-week one-hot.
    """
    history_dow = history_features[..., :7]
    sums = jnp.einsum("bh,bhd->bd", history_sales, history_dow)
    counts = jnp.sum(history_dow, axis=1)
    profile = sums / jnp.maximum(counts, 1.0)  # [B, 7]
    seasonal = jnp.einsum("btd,bd->bt", target_features[..., :7], profile)
    offset = seasonal - jnp.mean(history_sales, axis=1, keepdims=True)
    return jnp.stack([seasonal, offset], axis=-1)


def _seasonal_naive_init(key, shape, dtype=jnp.float32):
    """Kernel [2, 1] that maps `weekday_history` to its channel 0 (the seasonal-naive value)."""
    del key
    return jnp.zeros(shape, dtype).at[0].set(1.0)


class ConditionEncoder(nn.Module):
    """History and calendar -> condition [B, cond_dim].

    LSTM over the sales history (with each history day's calendar features, so the LSTM knows
    which weekday each value fell on), a dense layer over the target days' calendar features and
    one over the history's review features, fused by a dense layer.
    """

    lstm_size: int
    temporal_size: int
    review_size: int
    cond_dim: int
    spectral_norm: bool = False

    def _dense(self, features: int, name: str):
        return (
            spectral_dense(features, name) if self.spectral_norm else nn.Dense(features, name=name)
        )

    def _apply_dense(self, layer, x, update_stats):
        return layer(x, update_stats=update_stats) if self.spectral_norm else layer(x)

    @nn.compact
    def __call__(self, history_sales, history_features, target_features, update_stats=False):
        batch, history = history_sales.shape
        chex.assert_shape(history_features, (batch, history, None))
        chex.assert_shape(target_features, (batch, None, NUM_TEMPORAL))
        lstm_in = jnp.concatenate(
            [history_sales[..., None], history_features[..., :NUM_TEMPORAL]], axis=-1
        )
        (_, h_sales), _ = nn.RNN(nn.OptimizedLSTMCell(self.lstm_size), return_carry=True)(lstm_in)
        temporal = self._dense(self.temporal_size, "temporal")
        h_time = nn.relu(
            self._apply_dense(temporal, target_features.reshape(batch, -1), update_stats)
        )
        review = self._dense(self.review_size, "review")
        review_in = history_features[..., NUM_TEMPORAL:].reshape(batch, -1)
        h_review = nn.relu(self._apply_dense(review, review_in, update_stats))
        fuse = self._dense(self.cond_dim, "fuse")
        fused = jnp.concatenate([h_sales, h_time, h_review], axis=-1)
        return nn.relu(self._apply_dense(fuse, fused, update_stats))


class Generator(nn.Module):
    """(noise [B, T, Z], condition inputs) -> 7-day sequence [B, T] >= 0 (`relu_with_gradient`).

    The GRU decoder starts from a state made of the first day's noise and the condition and reads,
    at each target day, that day's calendar features, the history's value for that weekday
    (`weekday_history`) and its own noise; the output layer sees the weekday value and the day's
    noise too. Fresh noise per day lets samples carry day-to-day (Poisson-like) variation
    instead of smooth curves.
    """

    encoder: ConditionEncoder
    hidden: int
    seasonal_init: bool = True  # the weekly skip starts as the seasonal-naive forecast (or 0)

    @nn.compact
    def __call__(self, noise, history_sales, history_features, target_features):
        cond = self.encoder(history_sales, history_features, target_features)
        batch, horizon, _ = target_features.shape
        chex.assert_shape(noise, (batch, horizon, None))
        h0 = jnp.tanh(nn.Dense(self.hidden, name="init")(jnp.concatenate([noise[:, 0], cond], -1)))
        weekly = weekday_history(history_sales, history_features, target_features)
        steps = jnp.concatenate([target_features, weekly, noise], axis=-1)
        out = nn.RNN(nn.GRUCell(self.hidden), name="decoder")(steps, initial_carry=h0)
        mixed = jnp.concatenate([out, weekly, noise], -1)
        out = nn.relu(nn.Dense(self.hidden, name="mix")(mixed))
        # A linear path from the weekday summary to the output, by default initialised to the
        # seasonal-naive forecast (weight 1 on the weekday level, 0 on the offset): training
        # starts from "repeat the product's usual week" and learns how far to move from it; the
        # GRU path adds the trend, promotions and the day-to-day noise. With seasonal_init=False
        # it starts at 0 and the weekly shape must be learnt (README: the ablation).
        skip_init = _seasonal_naive_init if self.seasonal_init else nn.initializers.zeros
        skip = nn.Dense(1, kernel_init=skip_init, name="weekly_skip")(weekly)
        sequence = relu_with_gradient((nn.Dense(1, name="out")(out) + skip)[..., 0])
        chex.assert_shape(sequence, (batch, horizon))
        return sequence


class Critic(nn.Module):
    """(sequence [B, T], condition inputs) -> raw score [B] (no sigmoid: a Wasserstein critic).

    Conv1D over the sequence stacked with its calendar features and `weekday_history`, so it can
    compare each day with the product's usual level for that weekday, fused with the condition;
    every dense layer (the condition encoder's included) is spectrally normalised.
    """

    encoder: ConditionEncoder
    channels: int
    hidden: int

    @nn.compact
    def __call__(
        self, sequence, history_sales, history_features, target_features, update_stats=False
    ):
        batch, horizon = sequence.shape
        cond = self.encoder(history_sales, history_features, target_features, update_stats)
        weekly = weekday_history(history_sales, history_features, target_features)
        x = jnp.concatenate([sequence[..., None], target_features, weekly], axis=-1)
        x = nn.leaky_relu(nn.Conv(self.channels, (3,), name="conv1")(x), 0.2)
        x = nn.leaky_relu(nn.Conv(self.channels, (3,), name="conv2")(x), 0.2)
        x = jnp.concatenate([x.reshape(batch, -1), cond], axis=-1)
        x = nn.leaky_relu(spectral_dense(self.hidden, "dense1")(x, update_stats=update_stats), 0.2)
        score = spectral_dense(1, "score")(x, update_stats=update_stats)[:, 0]
        chex.assert_shape(score, (batch,))
        return score


class Forecaster(nn.Module):
    """The seed's LSTM forecaster: history (sales + features) and target calendar -> [B, T].

    The LSTM encodes the 30-day history into h [B, L]; each target day t is then decoded by the
    same two dense layers from [h, that day's calendar features, `weekday_history` of that day].
    Decoding day by day (instead of one dense layer from [h, all T days' calendars] to T outputs)
    ties each output to its own weekday: the shared layers see 7x more examples per weight, and
    the weekday summary hands them the product's level on that weekday directly.
    """

    lstm_size: int
    hidden: int
    horizon: int

    @nn.compact
    def __call__(self, history_sales, history_features, target_features):
        batch = history_sales.shape[0]
        chex.assert_shape(target_features, (batch, self.horizon, NUM_TEMPORAL))
        x = jnp.concatenate([history_sales[..., None], history_features], axis=-1)
        (_, h), _ = nn.RNN(nn.OptimizedLSTMCell(self.lstm_size), return_carry=True)(x)
        weekly = weekday_history(history_sales, history_features, target_features)
        per_day = jnp.broadcast_to(h[:, None], (batch, self.horizon, h.shape[-1]))
        x = jnp.concatenate([per_day, target_features, weekly], axis=-1)
        x = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
        return nn.Dense(1, name="out")(x)[..., 0]


class SequenceClassifier(nn.Module):
    """GRU over [B, T, C] -> logit [B] that the sequence is real (the discriminative score)."""

    hidden: int

    @nn.compact
    def __call__(self, x):
        carry, _ = nn.RNN(nn.GRUCell(self.hidden), return_carry=True)(x)
        return nn.Dense(1)(carry)[:, 0]


def make_encoder(config: ml_collections.ConfigDict, spectral_norm: bool) -> ConditionEncoder:
    mc = config.model
    return ConditionEncoder(
        lstm_size=mc.lstm_size,
        temporal_size=mc.temporal_size,
        review_size=mc.review_size,
        cond_dim=mc.cond_dim,
        spectral_norm=spectral_norm,
    )


def make_gan(config: ml_collections.ConfigDict) -> tuple[Generator, Critic]:
    mc = config.model
    generator = Generator(
        encoder=make_encoder(config, False), hidden=mc.gen_hidden, seasonal_init=mc.seasonal_init
    )
    critic = Critic(
        encoder=make_encoder(config, True), channels=mc.critic_channels, hidden=mc.critic_hidden
    )
    return generator, critic


def make_forecaster(config: ml_collections.ConfigDict) -> Forecaster:
    fc = config.forecaster
    return Forecaster(lstm_size=fc.lstm_size, hidden=fc.hidden, horizon=config.data.horizon)


def condition(batch: dict[str, Any]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The condition inputs of a window batch, in the modules' argument order."""
    return batch["history_sales"], batch["history_features"], batch["target_features"]
