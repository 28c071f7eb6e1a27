"""Selection strategies: how a diffusion classifier spends denoiser evaluations (no Lightning).

``Exhaustive`` (every class × every draw), ``Adaptive`` (successive elimination), ``PairedTTest``
(Clark & Jaini's pruning), ``Racing`` (elimination on standardised paired differences) and
``Prefilter`` (a discriminative model proposes the top-k). All return a :class:`Classification` over the candidate classes they were given.
"""

from diffclf.strategies.adaptive import Adaptive
from diffclf.strategies.base import Classification, Strategy
from diffclf.strategies.exhaustive import Exhaustive
from diffclf.strategies.prefilter import Prefilter
from diffclf.strategies.racing import Racing, fit_timestep_profile
from diffclf.strategies.ttest import PairedTTest

__all__ = ["Adaptive", "Classification", "Exhaustive", "PairedTTest", "Prefilter", "Racing", "Strategy", "fit_timestep_profile"]
