# Each target does its own set-up from nothing: a fresh clone needs only Python 3.11 and the package registries.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test bench bench-accuracy bench-accuracy-1h bench-template-check bench-predict lint clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

.PHONY: venv

demo: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH PREFECT_HOME=$(abspath .prefect) $(BIN)/emoflow demo

test: $(STAMP)
	bash tests/setup_system.sh
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q -p no:cacheprovider --timeout=900

# Throughput benchmarks (JSON in benchmarks/results/, with machine info; store_read.json: FeatureReader vs raw
# h5py, interleaved rounds, medians). The encoder rows need the demo models:
# run `make demo` (or `dvc repro demo_data`) first, else they are reported as failed with the reason.
bench: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m benchmarks.extract --offline --params params.yaml
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m benchmarks.train
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m benchmarks.store

# `emoflow predict` latency (one 5-s file, cold and warm) and throughput (100 files) on CPU; builds a small demo
# run under .emoflow/predict-demo first when there is none (~2 min on 2 cores).
bench-predict: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m benchmarks.predict

# Accuracy on real speech (RAVDESS, ../shared/corpora/ravdess): every model of params.ravdess.yaml and the
# baselines through the pipeline's stages, same folds, one run, plus the closed-form probe and two papers'-recipe
# ablations on the same folds; two models at a time, one thread each (the committed figures' setting). Several
# hours of CPU on 2 cores; resumes if interrupted: finished folds are cached.
bench-accuracy: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH PREFECT_HOME=$(abspath .prefect) OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 \
		$(BIN)/python -m benchmarks.accuracy --params params.ravdess.yaml --closed-form probe \
		--ablate head_fusion cnn_transformer --no-distill head_fusion --jobs 2 --set train.num_threads=1

# The one-hour profile of the same benchmark: the audio paper models and both baselines (closed-form probe too),
# one model per fold instead of params.ravdess.yaml's seed ensembles except rlc's (the first ensemble, set for
# the least stable model; one rlc per fold lost to classical), no ablation rows, longest jobs first so the two
# workers finish together. Resumes like bench-accuracy (its workspace caches finished folds).
KEEP_SEEDS := rlc
ONE_HOUR_MODELS := rlc cat ilt cnn_lstm_transformer cnn_transformer probe head_fusion classical
ONE_SEED := $(foreach m,$(filter-out $(KEEP_SEEDS) probe classical,$(ONE_HOUR_MODELS)),models.$(m).train.seed_ensemble=1)
ONE_HOUR_ARGS := --closed-form probe --jobs 2 --models $(ONE_HOUR_MODELS) --set train.num_threads=1 $(ONE_SEED)
bench-accuracy-1h: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH PREFECT_HOME=$(abspath .prefect) OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 \
		$(BIN)/python -m benchmarks.accuracy --params params.ravdess.yaml --workdir .emoflow/bench-ravdess-1h \
		--out benchmarks/results/accuracy_ravdess_1h.json $(ONE_HOUR_ARGS)

# params.ravdess.yaml as the README's template for another corpus: RAVDESS actors 1-12 relabelled, no gender column,
# the one-hour profile's models and settings (benchmarks/template_check.py).
bench-template-check: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH PREFECT_HOME=$(abspath .prefect) OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 \
		$(BIN)/python -m benchmarks.template_check $(ONE_HOUR_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check features models pipeline tests benchmarks

clean:
	rm -rf $(VENV) .prefect
