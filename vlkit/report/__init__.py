"""One result, tables, mean and sample std, plots and the HTML report."""
