"""What people read: records, reports, the review page and its viewer, figures, reviews."""
