"""Scoring a prediction run against ground truth: AP per class, mAP, recall by face size, confusion.

``maskbatch evaluate --truth TRUTH --pred OUT_DIR`` reads the job's ``detections.parquet`` (and
``images.parquet``) and a labelled set, and computes at one IoU threshold (0.5 by default):

* **AP per class** (``face_with_mask``, ``face_no_mask``), Pascal VOC 2010+ all-point interpolation,
  and **mAP** over the two classes. A predicted row takes part only in the AP of the class the job
  wrote for it (its hard label, as users see it); rows are ranked by ``score * P(class)`` with
  ``P(face_with_mask) = mask_prob`` and ``P(face_no_mask) = 1 - mask_prob``, so the ranking uses
  both the detector's and the classifier's confidence. A face given the wrong label is therefore a
  miss for its true class and a false alarm for the predicted one.
* **Matching**, per image and class, greedy by descending ranking score: a prediction takes the
  still-unmatched truth box of its class with the highest IoU (>= the threshold): true positive.
  Each truth box is matched at most once, so a duplicate of a matched face is a false positive. If
  no such box is left but the prediction overlaps an *ignore region* (IoU >= threshold), it is
  neither a hit nor a false alarm and leaves the ranking. Otherwise it is a false positive.
  IoU uses continuous pixel coordinates: area = (right - left) * (bottom - top).
* **Ignore regions**: truth boxes whose class is not in ``DEFAULT_LABEL_MAP`` (e.g.
  ``mask_weared_incorrect``, ``hijab_niqab``). They count in no recall.
* **COCO AP** (``metrics["coco"]``, :mod:`maskbatch.coco`): AP@[.5:.95], AP@0.5 and AP@0.75
  by pycocotools itself, whatever ``iou`` is, with the same ranking score; COCO interpolates
  precision at 101 recall points, so ``metrics["classes"][c]["ap_101"]`` is maskbatch's own
  curve interpolated that way: it equals pycocotools' per-class AP@0.5 (tests/test_coco.py).
* **Precision / recall at the chosen thresholds**: every row the job wrote (its detector and
  classifier thresholds), per class and class-agnostic (detection only: was the face found at all).
* **Detection recall by face size**: class-agnostic matching (ranked by the detector score alone),
  truth faces binned by the shorter side of their box: < 16, 16-32, 32-64, >= 64 px.
* **Label confusion** on the faces found by the class-agnostic matching: truth label (rows) against
  predicted label (columns).

Images evaluated are the images of the truth; predictions for other images are left out. An
image of the truth that the run did not predict (absent from images.parquet, or failed) counts as
all faces missed, with a warning. The matching is per image (numpy IoU matrices); above
``PARALLEL_MIN_IMAGES`` images the images are matched in parallel with a Dask bag.

The detections' box columns keep the dataset's quirk: headers ``x1,x2,y1,y2`` hold left, top,
right, bottom in that order (as ``train.csv``); :func:`boxes_from_submission` turns them into
``x1,y1,x2,y2`` = left, top, right, bottom.
"""
