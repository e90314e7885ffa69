// `lockstep plot`: learning curves of one or more run directories (their history.csv) as an SVG, in the
// manner of the chapter's `pd.DataFrame(history.history).plot(figsize=(8, 5)); plt.grid(True)`: every
// column of history.csv but epoch, lr and seconds is a line by epoch (each its own colour from
// matplotlib's default cycle, validation columns dashed); y from 0 to 1 when every value lies in [0, 1],
// else a range with round tick values; the learning rate on a second panel below when it changes
// (log scale when it spans more than 10x). Several runs are overlaid, labelled "RUN: loss", each run
// with its own marker shape. A PNG is made alongside with rsvg-convert (Debian: librsvg2-bin) when it
// is installed. No plotting library: the SVG is written here.
#pragma once

#include <string>
#include <vector>

namespace lockstep::plot {

// One run's history.csv: the header's columns and one row per epoch (NaN for an empty cell).
struct History {
  std::string name;  // the legend's prefix: the run directory's name (made unique among the runs plotted)
  std::string file;  // the history.csv read
  std::vector<std::string> columns;
  std::vector<std::vector<double>> rows;
  int column(const std::string& name) const;  // its index, or -1
};

// Reads RUN_DIR/history.csv (or the CSV file itself when given one). UserError naming the file when it
// is missing or malformed (no header with an epoch column, a row with another number of cells, a cell
// that is not a number, no rows).
History read_history(const std::string& run_dir_or_csv);

// Legend prefixes: each run's directory name, with parent directories added until they differ.
void name_runs(std::vector<History>& runs, const std::vector<std::string>& args);

struct Figure {
  std::string svg;
  int series = 0;      // lines of the loss/metrics panel
  int lr_series = 0;   // lines of the learning-rate panel (0: no panel, the rate never changes)
  bool lr_log = false; // the learning-rate panel is log-scaled
};
Figure render_svg(const std::vector<History>& runs);

// What `lockstep plot` wrote.
struct Written {
  std::string svg, png;  // png empty: none written
  Figure figure;
  std::string message;   // the lines to print on stdout
};
// Reads every run, writes `out` (.svg; or .png: the SVG next to it, then the PNG) and, when
// rsvg-convert is on PATH, the PNG next to the SVG. UserError naming the file for bad runs or an
// unwritable `out`.
Written plot_runs(const std::vector<std::string>& run_dirs, const std::string& out);

}  // namespace lockstep::plot
