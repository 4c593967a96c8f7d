"""A realistic synthetic EEG + iEEG corpus, written in the formats real corpora use.

The embedded default config and the scale benchmarks need data that exercises every
path of the corpus stage without shipping gigabytes of real recordings.  So this
module writes files that look like what the pipeline meets in the wild, not clean
arrays:

* ``<out>/eeg/``: a TUEG-like pile of scalp recordings, ``sub-XX_run-YY.edf`` (every
  third recording ``sub-XX_run-YY_eeg.fif`` instead; the ``_eeg.fif`` ending is one
  MNE's naming convention accepts, so neither writing nor reading warns).  Twenty
  10-20 channels spelled the way different systems spell them (``EEG T3-REF``,
  ``Cz..``, ``T3``, ``FP1``) plus one ECG and one EOG channel, 128/160/250/256 Hz by
  subject; 1/f background, occipital alpha, central mu, blinks, ECG, 60 Hz mains.
* ``<out>/ieeg/``: a BIDS-style tree of sEEG (depth shafts ``LA1..LA8``) and ECoG
  (grid ``G1..G16`` + strip ``S1..S6``) subjects, 512/1000/1024/2048 Hz, with
  ``channels.tsv`` / ``electrodes.tsv`` (MNI mm inside the brain) / ``coordsystem.json``
  sidecars and mains noise with harmonics.
* Every recording carries ``left`` / ``right`` annotations (4 s trials every ~10 s)
  with a class-dependent effect a linear model can find: mu desynchronisation over
  the contralateral central electrode (scalp), a high-gamma increase on a few
  contacts (iEEG).
* A known minority of recordings carries the faults the QA/QC rules of SPEC §1 must
  catch.  One scalp and one iEEG recording each hold a flat (constant) channel and a
  channel whose bursts saturate the amplifier for seconds at a time; the iEEG one
  also has a 65 s stretch where every channel reads zero (so whole windows must go).
  One scalp recording is sampled at 64 Hz (below the 100 Hz minimum) and one iEEG
  recording lasts 20 s (shorter than a window): both must be quarantined.

:func:`~diver.corpus.synth.task.write_synthetic_task` writes, into a folder of its
own, a labelled downstream task for fine-tuning (SPEC §5): trials annotated
``baseline`` / ``oscillation``, the latter carrying an injected 18 Hz rhythm on a few
channels.

Everything is deterministic by ``(hours, seed)``: the same call writes byte-identical
files on any machine (fixed measurement dates, FIF machine ids zeroed, one random
stream per recording).  ``<out>/manifest.json`` records the ground truth (faults,
responsive channels) and is written last, so its presence means the corpus is
complete.  Each file is written under a temporary name outside the dataset folders
and renamed into place, so a killed run never leaves a half-written recording where
the corpus stage would read it.

The modules, one job each (this package file holds no code):

* :mod:`~diver.corpus.synth.subjects`: the shared constants, montages and electrode
  geometry, subjects, and what a planned recording is;
* :mod:`~diver.corpus.synth.signals`: the signals as arrays (background, rhythms,
  artefacts, class effects, planted faults);
* :mod:`~diver.corpus.synth.files`: EDF/FIF recordings and BIDS sidecars, written
  atomically;
* :mod:`~diver.corpus.synth.corpus`: the corpus plan and
  :func:`~diver.corpus.synth.corpus.write_synthetic_corpus` (``diver synth``);
* :mod:`~diver.corpus.synth.task`: the labelled task,
  :func:`~diver.corpus.synth.task.write_synthetic_task` (``diver task synth``).
"""
