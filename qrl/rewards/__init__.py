"""Rewards for reinforcement learning on code, one concern a module: ``base`` (what a scorer is), ``components``
(the reward's components and their weights), ``test_cases`` (the sandboxed test-case reward), ``calibration``
(reference runs kept between processes), ``quality`` (code quality), ``learned`` (a trained reward model),
``composite`` (test cases plus quality), ``pass_at_k`` and ``score`` (the ``score`` command).

The package imports none of them itself: ``qrl.config.arguments`` imports ``qrl.rewards.quality``, and the scorers
import ``qrl.config.arguments``; import names from their modules.
"""
