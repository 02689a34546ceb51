"""The points where features reach into an algorithm's update without the algorithm knowing them.

An update (PPO's, SAC's) calls, for every minibatch, in this order:
`before_minibatch()`, then after `loss.backward()` (and only when every gradient is finite)
`after_backward()`, then after `optimizer.step()` `after_step()`. Mask keeping (service.training_masks)
and gradient statistics (service.gradient_stats) are such hooks; the trainer takes up new masks in
`before_minibatch`. Like Sample Factory's `invoke_after_each_minibatch`, but with the three points
pruning needs.
"""

from __future__ import annotations


class UpdateHooks:
    """No-op defaults: a hook overrides the points it needs."""

    def before_minibatch(self) -> None:
        pass

    def after_backward(self) -> None:
        pass

    def after_step(self) -> None:
        pass
