"""Every output file: schemas and atomic writers, part files and the commit log, COCO files, the
annotated previews and the run report (report.html)."""
