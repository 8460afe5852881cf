"""The synthetic world: movies, users and tastes, a generated history, and the live simulator."""
