"""The select step: leaderboard, McNemar gate against the champion and its KFP component."""
