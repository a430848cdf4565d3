# Shared stage rules for every recipe: egs/<corpus>/Makefile sets its variables, then
# `include ../recipe.mk`.
#
#   stage  1 download   corpus (or CORPUS_DIR=existing copy)
#          2 data       local/prepare.py CORPUS_DIR -> data/<set>/ (Kaldi data dirs)
#          3 augment    perturb-speed / add-noise copies of the training set (and a recipe's extra
#                       training data), combined           -> data/$(TRAIN_DATA)/ (SPEED_PERTURB=, NOISE_SNR=)
#          4 feats      asr make-feats + compute-cmvn      -> data/<set>/feats.scp, cmvn_global.ark
#          5 tokens     asr make-tokens                    -> data/lang/tokens.txt
#          6 lm         asr build-lm (train transcripts)   -> data/lm/lm.arpa      (LM_ORDER= to skip)
#                       or LM_ARPA=file (.arpa or .arpa.gz, e.g. OpenSLR 11's for LibriSpeech): that LM,
#                       decompressed/copied atomically, instead of one estimated here (LM_ORDER unused)
#                       + asr make-graph when DECODERS has wfst -> data/lm/graph[_<unit>]/TLG.fst
#          7 train      asr train                          -> exp/$(TAG)/final.pt
#          8 tune       asr tune-lm on the dev set         -> exp/$(TAG)/lm_tuned.yaml (TUNE_LM= to skip)
#          9 decode     asr decode per set and decoder     -> exp/$(TAG)/decode_<set>_<decoder>/text
#         10 score      asr score                          -> .../wer, errs.txt, per_spk, scores.json
#         11 results    asr results                        -> RESULTS.md (+ command, seed, wall times)
#         12 report     asr report                         -> exp/$(TAG)/report.html
#         13 transcribe-test  asr transcribe of each test file alone, scored (not in `all`; needs audio)
#                                                          -> exp/$(TAG)/decode_<set>_<decoder>_files/wer
#
# `make` runs all; `make decode` runs what decode needs; `make STAGE=3 STOP_STAGE=5` runs a numbered
# slice (stages outside it are skipped, their outputs assumed). A stage is skipped when its outputs
# exist and its stamp exp/.done/N-name.done holds the hash of its settings, config files and the
# stamps of the stages it reads (so a rerun stage makes its readers stale); `FORCE=1` (or
# `FORCE="train decode"`) reruns. Nothing here deletes finished work: every tool writes
# atomically over its own outputs. Each stage logs
# `<time> stage N name: inputs -> outputs` to the terminal and exp/log/stageN-name.log.

SHELL := bash
.SHELLFLAGS := -eo pipefail -c
.ONESHELL:

ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)
# The recipe's own dir (local/, conf/); the working dir (data/, exp/) may be elsewhere:
# `make -C /tmp/run -f $PWD/egs/demo/Makefile` runs the demo without writing into the repo.
RECIPE := $(abspath $(dir $(firstword $(MAKEFILE_LIST))))
# `make demo` at the top level puts .venv/bin first on PATH; a bare `make -C egs/x` finds it too.
ifeq ($(shell command -v asr 2>/dev/null),)
ifneq ($(wildcard $(ROOT)/.venv/bin/asr),)
export PATH := $(ROOT)/.venv/bin:$(PATH)
endif
endif
ASR ?= asr
# Local scripts (prepare.py, synth.py) need the interpreter that has the asr package.
ASR_PATH := $(or $(shell PATH='$(PATH)' command -v $(ASR) 2>/dev/null),$(ASR))
PYTHON ?= $(or $(wildcard $(dir $(ASR_PATH))python),python3)
export OMP_NUM_THREADS ?= 1
export PYTHONUNBUFFERED := 1

# ---- knobs (recipes set these before the include; all overridable on the command line) ----
NJ ?= 2
SEED ?= 1
CORPUS_DIR ?= corpus
CORPUS_CHECK ?= .
TRAIN_SET ?= train
DEV_SET ?= dev
TEST_SETS ?= test
DECODE_SETS ?= $(TEST_SETS)
UNIT ?= char
LEXICON ?=
# UNIT=bpe or unigram: the sentencepiece vocabulary size
VOCAB_SIZE ?=
CONF ?= $(ROOT)/conf
# A recipe with several feature front-ends lists them in FEATS_CHOICES, the default first, each with its
# conf/<name>.yaml: FEATS=<name> picks that feature config and lays conf/train_<name>.yaml (where there is
# one) over conf/train.yaml, and a FEATS other than the default gets a model dir of its own
# (ABLATION=<name> unless ABLATION is given).
ifneq ($(FEATS_CHOICES),)
FEATS ?= $(firstword $(FEATS_CHOICES))
ifeq ($(filter $(FEATS),$(FEATS_CHOICES)),)
$(error FEATS=$(FEATS): expected one of $(FEATS_CHOICES))
endif
ifneq ($(FEATS),$(firstword $(FEATS_CHOICES)))
ABLATION ?= $(FEATS)
endif
FEATS_CONF ?= $(RECIPE)/conf/$(FEATS).yaml
TRAIN_CONF ?= $(RECIPE)/conf/train.yaml $(wildcard $(RECIPE)/conf/train_$(FEATS).yaml)
endif
FEATS_CONF ?= $(CONF)/fbank.yaml
TRAIN_CONF ?= $(CONF)/blstm.yaml
DECODE_CONF ?= $(CONF)/decode_beam.yaml
LM_ORDER ?= 3
# An existing ARPA LM (plain or gzipped) for stage 6 to install as data/lm/lm.arpa instead of
# running `asr build-lm`; its contents are part of the stage's hash, so a changed file reruns it.
LM_ARPA ?=
DECODERS ?= greedy beam
# Unsupervised speaker adaptation of the beam decode (asr.adapt): ADAPT_EPOCHS=N fine-tunes a copy of the
# model on each test speaker's confident first-pass hypotheses for N epochs, then decodes that speaker
# again (Kaldi's two-pass speaker-adapted decoding). Greedy stays the model as trained; empty = off.
ADAPT_EPOCHS ?=
TAG ?= $(UNIT)_$(basename $(notdir $(firstword $(TRAIN_CONF))))
# One token table per unit: char and phone runs of a recipe must not overwrite each other's.
LANG_DIR ?= data/lang$(if $(filter char,$(UNIT)),,_$(UNIT))
PREPARE ?= $(PYTHON) $(RECIPE)/local/prepare.py $(CORPUS_DIR) data $(PREPARE_OPTS)
SCORE_OPTS ?=
CMVN_OPTS ?=
VALIDATE_OPTS ?=
FEATS_OPTS ?=
TRAIN_OPTS ?=
PERTURB_OPTS ?=
DECODE_OPTS ?=
# Recipes define `download_cmd` (shell) to fetch CORPUS_DIR; none means the corpus must exist.
DOWNLOAD_FROM ?= official source
download_cmd ?= echo "no download for this recipe: set CORPUS_DIR to an existing copy" >&2; exit 1

# A recipe run in several ways (fsdd's two splits, speechocean762's char and phone units) names
# each way with VARIANT, which keeps its stamps, logs and RESULTS.md notes apart.
VARIANT ?=
# One row of an ablation (egs/ablate.py): its own model dir, stamps, logs and RESULTS.md notes.
ABLATION ?=
DATA_VARIANT := $(VARIANT)
ifneq ($(ABLATION),)
VARIANT := $(if $(VARIANT),$(VARIANT)-)$(ABLATION)
TAG := $(TAG)-$(ABLATION)
endif
SFX := $(if $(VARIANT),.$(VARIANT))
# The data stages (1-6) write data/, which every ablation row of a variant shares, so their stamps and
# logs are the variant's, not the row's: a row whose data settings match the last run's skips them (and
# does not rewrite features under another row's training), and a row whose settings differ redoes them
# (with stamps of its own it would take the previous row's features for its own).
DATA_SFX := $(if $(DATA_VARIANT),.$(DATA_VARIANT))
DATA_STAGES := 1 2 3 4 5 6
sfx_of = $(if $(filter $(DATA_STAGES),$(firstword $(subst -, ,$(1)))),$(DATA_SFX),$(SFX))
STAGE_NAMES := 1-download 2-data 3-augment 4-feats 5-tokens 6-lm 7-train 8-tune 9-decode 10-score
# stage=log file pairs (egs/ablation.py reads a row's wall times from them)
STAGE_LOGS = $(foreach s,$(STAGE_NAMES),$(s)=$(LOGS)/stage$(s)$(call sfx_of,$(s)).log)
# Scored against data/<set>$(SCORE_REF_SUFFIX)/text (a phone recipe's <set>_phone: %WER = %PER).
SCORE_REF_SUFFIX ?=
STAGE ?= 1
STOP_STAGE ?= 100
STAMPS := exp/.done
LOGS := exp/log
EXP := exp/$(TAG)
# Training-set augmentation (stage 3), Kaldi's 3-way speed perturbation and additive noise: copies of
# TRAIN_SET (audio: perturb-speed / add-noise; features only: perturb-feats-speed) combined with it
# into TRAIN_DATA, which training reads. Tokens and the LM still come from TRAIN_SET's text (tokens
# from TOKENS_SET's: a recipe whose extra data brings units TRAIN_SET lacks sets it to $(TRAIN_DATA)).
SPEED_PERTURB ?=
NOISE_SNR ?=
NOISE_OPTS ?=
# A recipe's own extra training data (fsdd's SYNTH=: synthetic speakers): the shell command
# `extra_train_cmd` writes the data dirs EXTRA_TRAIN_DIRS, which are combined into TRAIN_DATA too;
# EXTRA_TRAIN_NAME names them in TRAIN_DATA, and EXTRA_TRAIN_FILES (its scripts) count in the stage hash.
EXTRA_TRAIN_NAME ?=
EXTRA_TRAIN_DIRS ?=
EXTRA_TRAIN_FILES ?=
# WORD_SPANS=1: word-span sub-utterances (asr subsegment) of TRAIN_SET, cut at the pauses that a
# first-pass model (this recipe's features, tokens and training config: exp/spans_pass1) finds by
# forced alignment, one opening at each word; for corpora whose utterances all open (or close) alike.
# WORD_SPANS_OPTS: more options of asr subsegment (--max-words N). Needs audio. WORD_SPANS_SEED, not
# SEED, seeds the first pass and the spans: runs with another SEED share data/<train>_wordspans.
WORD_SPANS ?=
WORD_SPANS_OPTS ?=
WORD_SPANS_SEED ?= 1
space := $(subst ,, )
AUG_NAME := $(if $(SPEED_PERTURB),_sp$(subst $(space),_,$(strip $(SPEED_PERTURB))))$(if $(NOISE_SNR),_noise$(subst $(space),_,$(strip $(NOISE_SNR))))$(if $(EXTRA_TRAIN_NAME),_$(EXTRA_TRAIN_NAME))$(if $(WORD_SPANS),_spans)
TRAIN_DATA := $(TRAIN_SET)$(AUG_NAME)
TOKENS_SET ?= $(TRAIN_SET)
TOKENS_AFTER := $(if $(filter $(TOKENS_SET),$(TRAIN_SET)),data,augment)
PREP_SETS := $(sort $(TRAIN_SET) $(DEV_SET) $(DECODE_SETS))
SETS := $(sort $(TRAIN_DATA) $(DEV_SET) $(DECODE_SETS))
# DECODERS may name wfst: stage 6 then also builds a TLG graph (asr make-graph) from LANG_DIR and the
# LM, and decoding searches it; a phone model's wfst output is words, scored against data/<set>/text.
WFST := $(filter wfst,$(DECODERS))
GRAPH ?= data/lm/graph$(if $(filter char,$(UNIT)),,_$(UNIT))
GRAPH_OPTS ?=
# Stage 8 picks alpha/beta (and the OOV penalty) on DEV_SET and installs them in the model dir.
TUNE_LM ?= 1
TUNE_OPTS ?=
LM := $(if $(or $(LM_ARPA),$(LM_ORDER)),data/lm/lm.arpa)
# A config file that does not exist yet means the tool's built-in defaults.
# A config may be several YAML fragments, merged left to right (asr train --conf a --conf b).
conf_opt = $(foreach f,$(wildcard $(1)),--conf $(f))
# A CORPUS_DIR given on the command line (or environment) is someone's copy: never write into it.
CORPUS_GIVEN := $(filter command environment,$(firstword $(origin CORPUS_DIR)))

# $(call stage,N,name,inputs,outputs,settings,stamps and files whose contents count):
# opens a stage; `exit 0` skips the rest of the (one-shell) recipe when it is up to date.
define stage
n=$(1); name=$(2); stamp=$(STAMPS)/$(1)-$(2)$(call sfx_of,$(1)).done; log=$(LOGS)/stage$(1)-$(2)$(call sfx_of,$(1)).log
if [ $(1) -lt $(STAGE) ] || [ $(1) -gt $(STOP_STAGE) ]; then
  echo "$$(date '+%F %T') stage $(1) $(2): outside STAGE=$(STAGE)..STOP_STAGE=$(STOP_STAGE), skipped"; exit 0; fi
hash=$$( { printf '%s\n' $(call q,$(5)); cat $(foreach u,$(6),$(STAMPS)/$(u)$(call sfx_of,$(u)).done) $(7) 2>/dev/null || true; } | sha256sum | cut -c1-32)
force=; case " $(FORCE) " in *" 1 "*|*" all "*|*" $(2) "*) force=1;; esac
missing=; for f in $(4); do [ -e "$$f" ] || missing="$$f"; done
if [ -z "$$force" ] && [ -z "$$missing" ] && [ -f $$stamp ] && [ "$$(cut -d' ' -f1 $$stamp)" = "$$hash" ]; then
  echo "$$(date '+%F %T') stage $(1) $(2): up to date, skipped"; exit 0; fi
mkdir -p $(STAMPS) $(LOGS)
exec > >(tee -a $$log) 2>&1
echo "$$(date '+%F %T') stage $(1) $(2): $(3) -> $(4)"
start=$$SECONDS
endef
# Closes a stage: the stamp is written only after every command succeeded. It holds the input
# hash and a run id: stages that read this one hash its whole stamp, so any rerun (FORCE too)
# makes them stale.
define stage_done
echo "$$hash $$(date +%s%N)" > $$stamp.tmp && mv $$stamp.tmp $$stamp
echo "$$(date '+%F %T') stage $$n $$name: done in $$((SECONDS - start))s"
endef
q = '$(subst ','\'',$(1))'

.PHONY: all download data augment feats tokens lm train tune decode score results report transcribe-test
.DEFAULT_GOAL := all
all: results report

download:
	@$(call stage,1,download,$(if $(CORPUS_GIVEN),$(CORPUS_DIR),$(DOWNLOAD_FROM)),$(CORPUS_DIR),$(CORPUS_DIR) $(download_cmd))
	have=1; for c in $(CORPUS_CHECK); do [ -e $(CORPUS_DIR)/$$c ] || have=; done
	if [ -n "$$have" ] && { [ -n "$(CORPUS_GIVEN)" ] || [ -z "$$force" ]; }; then
	  echo "using existing corpus $(CORPUS_DIR)"
	elif [ -n "$(CORPUS_GIVEN)" ]; then
	  echo "CORPUS_DIR=$(CORPUS_DIR): $(CORPUS_CHECK) not found there" >&2; exit 1
	else
	  $(download_cmd)
	fi
	$(stage_done)

data: download
	@$(call stage,2,data,$(CORPUS_DIR),$(PREP_SETS:%=data/%/text),$(PREPARE),1-download)
	$(PREPARE)
	for s in $(PREP_SETS); do $(ASR) validate-data-dir data/$$s $(VALIDATE_OPTS); done
	$(stage_done)

augment: data
	@$(call stage,3,augment,data/$(TRAIN_SET),data/$(TRAIN_DATA)/utt2spk,$(SPEED_PERTURB) $(NOISE_SNR) $(NOISE_OPTS) $(SEED)$(if $(EXTRA_TRAIN_DIRS), $(extra_train_cmd))$(if $(WORD_SPANS), spans $(WORD_SPANS_SEED) $(WORD_SPANS_OPTS) $(UNIT) $(LEXICON) $(VOCAB_SIZE) $(FEATS_OPTS) $(TRAIN_OPTS)),2-data,$(EXTRA_TRAIN_FILES) $(if $(WORD_SPANS),$(wildcard $(FEATS_CONF) $(TRAIN_CONF))))
	parts=""
	for f in $(SPEED_PERTURB); do
	  if [ -f data/$(TRAIN_SET)/wav.scp ]; then
	    $(ASR) perturb-speed data/$(TRAIN_SET) data/$(TRAIN_SET)_sp$$f --factor $$f --nj $(NJ) $(PERTURB_OPTS)
	  else  # features only (AN4's Sphinx MFCCs): stretch the frame sequence instead
	    $(ASR) perturb-feats-speed data/$(TRAIN_SET) data/$(TRAIN_SET)_sp$$f --factor $$f
	  fi
	  parts="$$parts data/$(TRAIN_SET)_sp$$f"
	done
	$(if $(NOISE_SNR),$(ASR) add-noise data/$(TRAIN_SET) data/$(TRAIN_SET)_noise --snr $(NOISE_SNR) --seed $(SEED) --nj $(NJ) $(NOISE_OPTS); parts="$$parts data/$(TRAIN_SET)_noise")$(if $(EXTRA_TRAIN_DIRS),$(if $(NOISE_SNR),;) $(extra_train_cmd); parts="$$parts $(EXTRA_TRAIN_DIRS)")
	$(if $(WORD_SPANS),$(word_spans_cmd))
	if [ -n "$$parts" ]; then $(ASR) combine-data-dirs data/$(TRAIN_DATA) data/$(TRAIN_SET) $$parts; fi
	$(stage_done)

# The first pass of WORD_SPANS: its own features, tokens and model in exp/spans_pass1, trained on
# TRAIN_SET alone (which stands in for dev: the model only has to align its own training data). It is
# stage 3's, so the dir is the variant's, not an ablation row's.
define word_spans_cmd
p=exp/spans_pass1$(DATA_SFX); rm -rf $$p; mkdir -p $$p
cp -r data/$(TRAIN_SET) $$p/data
$(ASR) make-feats $$p/data $(call conf_opt,$(FEATS_CONF)) $(FEATS_OPTS) --nj $(NJ)
$(ASR) compute-cmvn $$p/data $(CMVN_OPTS)
$(ASR) make-tokens data/$(TRAIN_SET)/text $$p/lang --unit $(UNIT) $(if $(LEXICON),--lexicon $(LEXICON)) $(if $(VOCAB_SIZE),--vocab-size $(VOCAB_SIZE))
$(ASR) train $$p/data $$p/data $$p/lang $$p/exp $(call conf_opt,$(TRAIN_CONF)) --set seed=$(WORD_SPANS_SEED) $(TRAIN_OPTS)
$(ASR) align $$p/exp $$p/data -o $$p/align || [ -s $$p/align/ctm ]  # what cannot be aligned is named and left out
rm -rf data/$(TRAIN_SET)_wordspans
$(ASR) subsegment data/$(TRAIN_SET) $$p/align/ctm data/$(TRAIN_SET)_wordspans --seed $(WORD_SPANS_SEED) $(WORD_SPANS_OPTS) || [ -s data/$(TRAIN_SET)_wordspans/segments ]
parts="$$parts data/$(TRAIN_SET)_wordspans"
endef

feats: augment
	@$(call stage,4,feats,$(SETS:%=data/%),$(SETS:%=data/%/feats.scp) data/$(TRAIN_DATA)/cmvn_global.ark,$(FEATS_OPTS) $(FEATS_CMD),3-augment,$(wildcard $(FEATS_CONF)))
	$(if $(FEATS_CMD),$(FEATS_CMD),for s in $(SETS); do $(ASR) make-feats data/$$s $(call conf_opt,$(FEATS_CONF)) $(FEATS_OPTS) --nj $(NJ); done)
	for s in $(SETS); do $(ASR) compute-cmvn data/$$s $(CMVN_OPTS); done
	$(stage_done)

tokens: $(TOKENS_AFTER)
	@$(call stage,5,tokens,data/$(TOKENS_SET)/text,$(LANG_DIR)/tokens.txt,$(if $(filter data,$(TOKENS_AFTER)),,$(TOKENS_SET) )$(UNIT) $(LEXICON) $(VOCAB_SIZE),$(if $(filter data,$(TOKENS_AFTER)),2-data,3-augment),$(LEXICON))
	$(ASR) make-tokens data/$(TOKENS_SET)/text $(LANG_DIR) --unit $(UNIT) $(if $(LEXICON),--lexicon $(LEXICON)) $(if $(VOCAB_SIZE),--vocab-size $(VOCAB_SIZE))
	$(stage_done)

lm: data $(if $(WFST),tokens)
	@$(call stage,6,lm,$(or $(LM_ARPA),data/$(TRAIN_SET)/text) $(if $(WFST),$(LANG_DIR)),$(LM) $(if $(WFST),$(GRAPH)/TLG.fst),$(or $(LM_ARPA),$(LM_ORDER)) $(GRAPH_OPTS),$(if $(LM_ARPA),,2-data) $(if $(WFST),5-tokens),$(LM_ARPA))
	$(if $(LM_ARPA),$(install_arpa),$(if $(LM),$(ASR) build-lm data/$(TRAIN_SET)/text --order $(LM_ORDER) -o $(LM)))
	$(if $(WFST),$(ASR) make-graph $(LANG_DIR) --lm $(LM) -o $(GRAPH) $(GRAPH_OPTS))
	$(stage_done)

# LM_ARPA -> $(LM) through a temp file and a rename; the plain copy is what every reader of the
# LM (tune-lm's copy in the model dir, KenLM, kaldilm) takes.
define install_arpa
[ -f $(LM_ARPA) ] || { echo "LM_ARPA=$(LM_ARPA): no such file" >&2; exit 1; }
mkdir -p $(dir $(LM))
case $(LM_ARPA) in *.gz) gzip -dc -- $(LM_ARPA);; *) cat -- $(LM_ARPA);; esac > $(LM).tmp
grep -m1 -qF '\data\' $(LM).tmp || { echo "LM_ARPA=$(LM_ARPA): no \data\ header, not an ARPA file" >&2; rm -f $(LM).tmp; exit 1; }
mv -f $(LM).tmp $(LM)
echo "$(LM): installed from $(LM_ARPA): $$(awk '/^ngram /{printf "%s ", $$0} /-grams:/{exit}' $(LM))"
endef

train: feats tokens
	@$(call stage,7,train,data/$(TRAIN_DATA) data/$(DEV_SET) $(LANG_DIR),$(EXP)/final.pt,$(TAG) $(SEED) $(TRAIN_OPTS),4-feats 5-tokens,$(wildcard $(TRAIN_CONF)))
	$(ASR) train data/$(TRAIN_DATA) data/$(DEV_SET) $(LANG_DIR) $(EXP) $(call conf_opt,$(TRAIN_CONF)) --set seed=$(SEED) $(TRAIN_OPTS)
	$(stage_done)

tune: $(if $(LM),lm) train
	@$(call stage,8,tune,$(EXP) data/$(DEV_SET) $(LM),$(if $(and $(LM),$(TUNE_LM)),$(EXP)/lm_tuned.yaml),$(TUNE_LM) $(TUNE_OPTS),4-feats 6-lm 7-train,$(wildcard $(DECODE_CONF)))
	$(if $(and $(LM),$(TUNE_LM)),$(ASR) tune-lm $(EXP) data/$(DEV_SET) $(call conf_opt,$(DECODE_CONF)) --lm $(LM) $(TUNE_OPTS),echo "no LM or TUNE_LM empty: nothing to tune")
	$(stage_done)

decode_dirs := $(foreach s,$(DECODE_SETS),$(foreach d,$(DECODERS),$(EXP)/decode_$(s)_$(d)))
decode: tune
	@$(call stage,9,decode,$(EXP) $(DECODE_SETS:%=data/%) $(LM),$(decode_dirs:%=%/text),$(DECODERS) $(DECODE_SETS) $(DECODE_OPTS)$(if $(ADAPT_EPOCHS), adapt $(ADAPT_EPOCHS)),4-feats 6-lm 7-train 8-tune,$(wildcard $(DECODE_CONF)))
	for s in $(DECODE_SETS); do
	  for d in $(DECODERS); do
	    case $$d in
	      greedy) opts="";;
	      wfst) opts="--graph $(GRAPH)";;  # the graph holds the LM (and, for phones, the lexicon)
	      *) opts="$(call conf_opt,$(DECODE_CONF)) $(if $(LM),--lm $(LM)) $(if $(ADAPT_EPOCHS),--set adapt_epochs=$(ADAPT_EPOCHS))";;
	    esac
	    $(ASR) decode $(EXP) data/$$s --decoder $$d $$opts $(DECODE_OPTS) --nj $(NJ)
	  done
	done
	$(stage_done)

score: decode
	@$(call stage,10,score,$(decode_dirs:%=%/text),$(decode_dirs:%=%/wer),$(SCORE_OPTS),9-decode 2-data)
	for s in $(DECODE_SETS); do
	  for d in $(DECODERS); do
	    ref=data/$${s}$(SCORE_REF_SUFFIX)/text; [ $$d = wfst ] && ref=data/$$s/text  # TLG decoding gives words
	    $(ASR) score $$ref $(EXP)/decode_$${s}_$$d/text --utt2spk data/$$s/utt2spk $(SCORE_OPTS) -o $(EXP)/decode_$${s}_$$d
	  done
	done
	$(stage_done)

# File by file, as a user's 'asr transcribe MODEL a.wav b.wav ...' sees them: each test recording alone,
# with no speaker known (a cmvn: speaker model takes the file's own stats with the global prior, and nothing
# is adapted). Not part of 'all': the figure the decode stage cannot give for loose files.
TRANSCRIBE_OPTS ?=
files_dirs := $(foreach s,$(DECODE_SETS),$(foreach d,$(DECODERS),$(EXP)/decode_$(s)_$(d)_files))
transcribe-test: tune
	@$(call stage,13,transcribe-test,$(EXP) $(DECODE_SETS:%=data/%),$(files_dirs:%=%/wer),$(DECODERS) $(DECODE_SETS) $(TRANSCRIBE_OPTS) $(SCORE_OPTS),2-data 6-lm 7-train 8-tune,$(wildcard $(DECODE_CONF)))
	for s in $(DECODE_SETS); do
	  if [ ! -f data/$$s/wav.scp ] || [ -f data/$$s/segments ]; then
	    echo "transcribe-test: data/$$s has no wav.scp of one recording per utterance (features only, or segments)" >&2; exit 1
	  fi
	  for d in $(DECODERS); do
	    case $$d in
	      greedy) opts="";;
	      wfst) opts="--graph $(GRAPH)";;
	      *) opts="$(call conf_opt,$(DECODE_CONF)) $(if $(LM),--lm $(LM))";;
	    esac
	    out=$(EXP)/decode_$${s}_$${d}_files; mkdir -p $$out
	    $(ASR) transcribe $(EXP) data/$$s/wav.scp --decoder $$d $$opts $(TRANSCRIBE_OPTS) -o $$out/text
	    ref=data/$${s}$(SCORE_REF_SUFFIX)/text; [ $$d = wfst ] && ref=data/$$s/text
	    $(ASR) score $$ref $$out/text --utt2spk data/$$s/utt2spk $(SCORE_OPTS) -o $$out
	  done
	done
	$(stage_done)

results: score
	@$(call stage,11,results,$(decode_dirs:%=%/wer),RESULTS.md,$(TAG),10-score)
	$(ASR) results . -o RESULTS.md
	$(run_info) > $(LOGS)/run_info.md
	$(PYTHON) - RESULTS.md $(LOGS)/run_info.md <<'EOF'
	import sys; from pathlib import Path
	out, info = Path(sys.argv[1]), Path(sys.argv[2]).read_text()
	b, e = "<!-- recipe run begin$(SFX) -->", "<!-- recipe run end$(SFX) -->"
	old = out.read_text()
	new = old.split(b)[0] + b + "\n" + info + e + old.split(e, 1)[1] if b in old else old.rstrip("\n") + "\n\n" + b + "\n" + info + e + "\n"
	out.write_text(new)
	EOF
	cat RESULTS.md
	$(stage_done)

report: score
	@$(call stage,12,report,$(EXP),$(EXP)/report.html,$(TAG),10-score 7-train)
	$(ASR) report $(EXP)
	$(stage_done)

# The command, seed, settings and stage wall times behind RESULTS.md (this machine's clock).
define run_info
{ echo "## How these numbers were made"; echo
  echo "- command: \`$(strip make -C egs/$(notdir $(RECIPE)) $(filter-out PATH=% STAGE=% STOP_STAGE=% FORCE=%,$(MAKEOVERRIDES)))\`"
  echo "- variant: $(or $(VARIANT),default); seed: $(SEED); unit: $(UNIT); model dir: \`$(EXP)\`; decoders: $(DECODERS); $(if $(LM_ARPA),LM: \`$(notdir $(LM_ARPA))\`,LM order: $(or $(LM_ORDER),none))"
  echo "- configs: feats \`$(notdir $(or $(wildcard $(FEATS_CONF)),built-in))\`, train \`$(notdir $(or $(wildcard $(TRAIN_CONF)),built-in))\` $(TRAIN_OPTS), decode \`$(notdir $(or $(wildcard $(DECODE_CONF)),built-in))\`"
  echo "- training data: \`data/$(TRAIN_DATA)\` (speed perturbation: $(or $(SPEED_PERTURB),none); noise SNR dB: $(or $(NOISE_SNR),none)$(if $(EXTRA_TRAIN_NAME),; extra: $(EXTRA_TRAIN_NAME))$(if $(WORD_SPANS),; word spans: yes)); LM weights tuned on \`$(DEV_SET)\`: $(if $(and $(LM),$(TUNE_LM)),yes,no)"
  echo "- machine: $$(nproc --all) CPU cores, $$(date '+%F'); code: $$(git -C $(ROOT) rev-parse --short HEAD 2>/dev/null || echo 'uncommitted')"
  echo; echo "| stage | wall time (s) |"; echo "|---|---:|"; total=0
  for p in $(STAGE_LOGS); do
    s=$${p%%=*}; f=$${p#*=}; [ -f $$f ] || continue
    t=$$(grep -o 'done in [0-9]*s' $$f | tail -1 | grep -o '[0-9]*' || true)
    [ -n "$$t" ] && echo "| $$s | $$t |" && total=$$((total + t))
  done; echo "| total | $$total |"; echo
  echo "Wall times are from the last run of each stage on this machine; on a shared 2-core machine"
  echo "they vary with the load (load average now: $$(cut -d' ' -f1-3 /proc/loadavg))."; echo; }
endef

# `make print-EXP` prints a variable's value (egs/ablation.py asks the recipe where a row's outputs are).
print-%:
	@echo '$($*)'
