"""Reports from finished run directories: results.json loading, matrix.csv, report.md, heatmaps, comparisons."""
