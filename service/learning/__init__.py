"""Learning, in torch: the policy, PPO, SAC, update hooks, masked training, normalisation, distillation, checkpoints."""
