# The two commands of the README, and the benchmarks.
.PHONY: test demo bench install

install:
	scripts/install.sh

test:
	scripts/test.sh

demo:
	scripts/demo.sh

bench:
	scripts/bench.sh
