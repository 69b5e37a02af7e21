# stagebook: `make run` runs the whole pipeline on the embedded digits; `make test` runs the tests.
# Both install what is missing first: a .venv from requirements.lock, and TeX Live for the PDFs.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
TEX_PACKAGES := texlive-latex-base texlive-latex-recommended texlive-fonts-recommended lmodern latexmk poppler-utils

export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: run test bench setup tex lab mlflow-ui mlflow-server export wheel lock clean

run: setup tex
	@# The stages before the sealed test first; then the test is read only for a model the team submits. The worked
	@# example submits stage 04's model when it beats the stage-02 bar on validation (stagebook refuses it otherwise),
	@# lets DVC evaluate it, then registers it and makes it champion if the gate lets it (`stagebook promote`).
	stages=$$(stagebook stages --before-test) && dvc repro $$stages
	@if stagebook submit --by "make run" --reason "the worked example's model"; then dvc repro && \
	  (stagebook promote || echo "stagebook: not promoted (see above): the champion stays"); \
	else dvc repro && echo "stagebook: no model submitted (see above); reports/06_sealed_test.pdf says why"; fi
	@echo "stagebook: done. PDFs: $$(ls reports/*.pdf reports/model_card/*.pdf 2>/dev/null | tr '\n' ' ')| runs: make mlflow-ui | notebooks: make lab"

test: setup tex
	pytest -q

bench: setup tex
	python bench/run.py

setup: $(STAMP)

# The template itself carries the toolkit's source (editable install; its own package via a .pth); a project made by
# `stagebook new` installs the pinned toolkit wheel from wheels/ and its own package editable.
$(STAMP): requirements.lock pyproject.toml $(wildcard wheels/stagebook-*.whl)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "stagebook: Python 3.11 is needed (found " + sys.version.split()[0] + "); set PYTHON=/path/to/python3.11")'
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@echo "stagebook: installing the pinned packages into $(VENV) (about 3 minutes the first time)"
	$(VENV)/bin/python -m pip install -qq --disable-pip-version-check -r requirements.lock
	@if [ -d src/stagebook ]; then \
	  $(VENV)/bin/python -m pip install -qq --disable-pip-version-check --no-deps --no-build-isolation -e . && \
	  echo "$(CURDIR)/src" > "$$($(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/stagebook-example-src.pth"; \
	else \
	  $(VENV)/bin/python -m pip install -qq --disable-pip-version-check --no-deps --force-reinstall wheels/stagebook-*.whl && \
	  $(VENV)/bin/python -m pip install -qq --disable-pip-version-check --no-deps --no-build-isolation -e .; \
	fi
	@# notebook-aware git diff and merge (nbdime) for this clone
	@if [ -d .git ]; then $(BIN)/nbdime config-git --enable >/dev/null; fi
	touch $(STAMP)

# TeX Live from Debian's packages when we are root; otherwise say what to install.
tex:
	@if command -v latexmk >/dev/null && command -v pdflatex >/dev/null && command -v pdftoppm >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "stagebook: installing TeX Live (about 30 s)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TEX_PACKAGES) >/dev/null; \
	else echo "stagebook: PDFs need TeX Live; run: sudo apt-get install $(TEX_PACKAGES)"; exit 1; fi

lab: setup
	@# saves go through the stored form (nbdev-clean, no outputs): opening and saving changes nothing git or DVC sees
	jupyter lab --ip 127.0.0.1 --no-browser $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) \
	  --ContentsManager.pre_save_hook=stagebook.notebooks.pre_save_hook nbs/

mlflow-ui: setup
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000 --workers 1

# For sweeps on several machines: the tracking server on the head node (STAGEBOOK_TRACKING_URI=http://HEAD:5000).
mlflow-server: setup
	stagebook server --host 0.0.0.0 --port 5000

export: setup
	nbdev-export

# The toolkit's wheel (the template only): dist/stagebook-VERSION-py3-none-any.whl
wheel: setup
	python -c 'from stagebook.template import build_wheel; print(build_wheel(".", None, __import__("pathlib").Path("dist")))'

lock: setup
	{ head -1 requirements.lock; $(VENV)/bin/pip freeze --all --exclude-editable | grep -v -E '^(stagebook|pip==)'; } > requirements.lock.new && mv requirements.lock.new requirements.lock

clean:
	rm -rf reports/.staging reports/.failed reports/.scratch .pytest_cache
