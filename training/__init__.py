"""Training ReLU networks to be provably robust: architectures, regularisers, trainer, ``train-mmr``.

Training uses torch modules for speed; every architecture converts exactly to the one
representation, :class:`verify.network.Network`, and the regularisers that need bounds or
attacks reuse :mod:`verify.bounds` and :mod:`verify.attacks` on a Network that shares the
module's live parameters (``network_from_torch(..., share_parameters=True)``).
"""
