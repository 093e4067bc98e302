# The two set-up commands of the README. Both work on a fresh machine (they install what they need).
.PHONY: demo test setup

setup:
	bash scripts/setup

# kade's main job on the embedded default: a registry on loopback and the example app.
demo: setup
	bash scripts/demo

# The whole test suite: unit, real registry, and the real test cluster.
test: setup
	bash scripts/test
