"""Scripts that run the real peer tools (AIMET, NNCF) in their own virtual environments (bench/peers/setup.sh).

Nothing here is imported by mixq or by bench/baselines.py: baselines.py runs these scripts by subprocess.
"""
