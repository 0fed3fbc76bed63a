"""The search itself: the space, seed maps and their plan, sensitivity proxies, the objective, the
study ledger, multi-fidelity promotion, Pareto maths, Optuna storage and the runner's loop.  It
builds on ``search.quant``; ``search.quant`` never imports it."""
