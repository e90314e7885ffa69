// `lockstep plot`: see plot.h.
#include "plot.h"

#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"

extern char** environ;

namespace lockstep::plot {
namespace fs = std::filesystem;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// matplotlib's default colour cycle (tab10), which pandas' DataFrame.plot uses.
const char* const kColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                               "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
constexpr int kMarkers = 5;  // circle, square, triangle up, diamond, triangle down: one per run
const char* const kFont = "DejaVu Sans, Bitstream Vera Sans, Liberation Sans, Arial, Helvetica, sans-serif";
constexpr double kTickFont = 12, kLegendFont = 12, kLabelFont = 13;
// Markers on every epoch up to this many, else on about this many evenly spread (matplotlib's markevery),
// so that the runs stay told apart by their marker shapes on long runs too.
constexpr int kMarkedPoints = 20;
int mark_every(size_t n) { return n <= size_t(kMarkedPoints) ? 1 : int((n + kMarkedPoints - 1) / kMarkedPoints); }

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

std::vector<std::string> split_csv(const std::string& line) {
  std::vector<std::string> cells;
  std::string cell;
  std::istringstream is(line);
  while (std::getline(is, cell, ',')) cells.push_back(trim(cell));
  if (!line.empty() && line.back() == ',') cells.push_back("");
  return cells;
}

bool parse_number(const std::string& s, double* v) {
  if (s.empty()) {
    *v = kNaN;
    return true;
  }
  const char* b = s.c_str();
  char* e = nullptr;
  errno = 0;
  const double x = std::strtod(b, &e);
  if (e == b || *e != '\0') return false;
  *v = x;
  return true;
}

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&apos;"; break;
      default:
        // Control characters are not allowed in XML 1.0.
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n') o += '?';
        else o += c;
    }
  }
  return o;
}

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", v);
  std::string s = b;
  if (s == "-0.00") s = "0.00";
  return s;
}

// Width of `s` in DejaVu Sans at `size` px, roughly (the legend's box and the margins are sized with it).
double text_width(const std::string& s, double size) {
  double w = 0;
  for (unsigned char c : s) {
    if (c >= 0x80 && c < 0xC0) continue;  // UTF-8 continuation byte
    if (std::strchr("il.,:;!|'I ", c)) w += 0.32;
    else if (std::strchr("fjrt()[]-", c)) w += 0.40;
    else if (std::strchr("mwMW%", c)) w += 0.92;
    else if (std::isupper(c)) w += 0.72;
    else w += 0.62;
  }
  return w * size;
}

// ---- axes ----------------------------------------------------------------------------------------
struct Axis {
  double lo = 0, hi = 1;
  bool log = false;
  std::vector<double> ticks;
  std::vector<std::string> labels;
  double frac(double v) const {  // 0 at lo, 1 at hi
    if (log) return (std::log10(v) - std::log10(lo)) / (std::log10(hi) - std::log10(lo));
    return (v - lo) / (hi - lo);
  }
};

double nice_step(double raw) {
  const double e = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / e;
  const double m = f <= 1.0 + 1e-9 ? 1 : f <= 2.0 + 1e-9 ? 2 : f <= 2.5 + 1e-9 ? 2.5 : f <= 5.0 + 1e-9 ? 5 : 10;
  return m * e;
}

// Tick labels with as many decimals as the step needs ("0.0", "0.2", ... "1.0"), or %g for tiny steps.
std::vector<std::string> linear_labels(const std::vector<double>& ticks, double step) {
  double biggest = 0;
  for (double t : ticks) biggest = std::max(biggest, std::fabs(t));
  std::vector<std::string> out;
  char b[64];
  if (step < 1e-4 || biggest >= 1e6) {
    for (double t : ticks) {
      std::snprintf(b, sizeof b, "%.3g", std::fabs(t) < step * 1e-6 ? 0.0 : t);
      out.push_back(b);
    }
    return out;
  }
  int d = 0;
  for (; d < 10; ++d) {
    const double v = step * std::pow(10.0, d);
    if (std::fabs(v - std::round(v)) < 1e-6 * std::max(1.0, v)) break;
  }
  for (double t : ticks) {
    std::snprintf(b, sizeof b, "%.*f", d, std::fabs(t) < step * 1e-6 ? 0.0 : t);
    out.push_back(b);
  }
  return out;
}

// A linear axis as matplotlib draws one: the data's range and 5% on either side (not below 0 when the
// data are never negative: `nonneg`), ticks on round values inside it (about `target` of them).
Axis linear_axis(double lo, double hi, int target, bool nonneg) {
  Axis a;
  if (!(hi > lo)) {
    const double d = lo == 0 ? 1 : std::fabs(lo) * 0.1;
    lo -= d;
    hi += d;
  }
  const double pad = 0.05 * (hi - lo);
  a.lo = lo - pad;
  a.hi = hi + pad;
  if (nonneg && a.lo < 0) a.lo = 0;
  const double step = nice_step((a.hi - a.lo) / std::max(target, 2));
  const long k0 = std::lround(std::ceil(a.lo / step - 1e-9)), k1 = std::lround(std::floor(a.hi / step + 1e-9));
  for (long k = k0; k <= k1; ++k) a.ticks.push_back(double(k) * step);
  a.labels = linear_labels(a.ticks, step);
  return a;
}

Axis unit_axis() {  // plt.gca().set_ylim(0, 1)
  Axis a;
  a.lo = 0;
  a.hi = 1;
  for (int k = 0; k <= 5; ++k) a.ticks.push_back(k * 0.2);
  a.labels = linear_labels(a.ticks, 0.2);
  return a;
}

// m x 10^e as matplotlib writes log ticks: "10⁻³", "2×10⁻³" (Unicode superscripts, in DejaVu Sans).
std::string power_label(double m, int e) {
  static const char* const sup[] = {"⁰", "¹", "²", "³", "⁴", "⁵", "⁶", "⁷", "⁸", "⁹"};
  std::string s = m == 1 ? "" : str_cat(m, "×");
  s += "10";
  if (e < 0) s += "⁻";
  for (char c : std::to_string(std::abs(e))) s += sup[c - '0'];
  return s;
}

// A log axis over [lo, hi] (lo > 0): limits on 1, 2 or 5 x 10^k; ticks on decades (and on 2 and 5 x 10^k
// when the axis spans under three decades).
Axis log_axis(double lo, double hi) {
  Axis a;
  a.log = true;
  const double mant[] = {1, 2, 5};
  auto below = [&](double v) {
    double e = std::pow(10.0, std::floor(std::log10(v)));
    for (int i = 2; i >= 0; --i)
      if (mant[i] * e <= v * (1 + 1e-9)) return mant[i] * e;
    return e;
  };
  auto above = [&](double v) {
    double e = std::pow(10.0, std::floor(std::log10(v)));
    for (int i = 0; i < 3; ++i)
      if (mant[i] * e >= v * (1 - 1e-9)) return mant[i] * e;
    return 10 * e;
  };
  a.lo = below(lo / 1.08);
  a.hi = above(hi * 1.08);
  const bool fine = a.hi / a.lo < 1000 * (1 + 1e-9);
  const int e0 = int(std::floor(std::log10(a.lo))) - 1, e1 = int(std::ceil(std::log10(a.hi))) + 1;
  const int every = (e1 - e0) > 10 ? 2 : 1;
  for (int e = e0; e <= e1; ++e) {
    for (int i = 0; i < (fine ? 3 : 1); ++i) {
      const double v = mant[i] * std::pow(10.0, e);
      if (v < a.lo * (1 - 1e-9) || v > a.hi * (1 + 1e-9)) continue;
      if (!fine && (e % every) != 0) continue;
      a.ticks.push_back(v);
      a.labels.push_back(power_label(mant[i], e));
    }
  }
  return a;
}

// ---- series --------------------------------------------------------------------------------------
struct Series {
  std::string run, column, label, color;
  bool dashed = false;
  int marker = 0;
  std::vector<double> x, y;  // y NaN: a gap
};

struct Box {
  double x = 0, y = 0, w = 0, h = 0;
  bool contains(double px, double py, double m = 2) const {
    return px >= x - m && px <= x + w + m && py >= y - m && py <= y + h + m;
  }
};

struct Panel {
  Box area;  // the plotting area, in pixels
  Axis y;
  std::vector<Series> series;
  std::string ylabel;
  bool xlabels = false;  // tick labels and the x label under this panel
  Box legend;
  bool legend_outside = false;
};

std::string marker_svg(int kind, double x, double y, const std::string& color) {
  std::ostringstream o;
  const double r = 3.5;
  switch (kind % kMarkers) {
    case 0:
      o << "<circle cx=\"" << num(x) << "\" cy=\"" << num(y) << "\" r=\"" << num(r) << "\" fill=\"" << color << "\"/>";
      break;
    case 1:
      o << "<rect x=\"" << num(x - r) << "\" y=\"" << num(y - r) << "\" width=\"" << num(2 * r) << "\" height=\""
        << num(2 * r) << "\" fill=\"" << color << "\"/>";
      break;
    case 2:
      o << "<polygon points=\"" << num(x) << "," << num(y - 1.25 * r) << " " << num(x + 1.15 * r) << "," << num(y + r)
        << " " << num(x - 1.15 * r) << "," << num(y + r) << "\" fill=\"" << color << "\"/>";
      break;
    case 3:
      o << "<polygon points=\"" << num(x) << "," << num(y - 1.35 * r) << " " << num(x + r) << "," << num(y) << " "
        << num(x) << "," << num(y + 1.35 * r) << " " << num(x - r) << "," << num(y) << "\" fill=\"" << color << "\"/>";
      break;
    default:
      o << "<polygon points=\"" << num(x) << "," << num(y + 1.25 * r) << " " << num(x + 1.15 * r) << "," << num(y - r)
        << " " << num(x - 1.15 * r) << "," << num(y - r) << "\" fill=\"" << color << "\"/>";
  }
  return o.str();
}

struct XAxis {
  double lo = 0, hi = 1;
  std::vector<double> ticks;
  std::vector<std::string> labels;
};

XAxis epoch_axis(double lo, double hi) {
  XAxis a;
  if (!(hi > lo)) {
    lo -= 1;
    hi += 1;
  }
  double step = nice_step((hi - lo) / 8);
  if (step < 1) step = 1;
  if (std::fabs(step - 2.5) < 1e-9) step = 2;
  for (double t = std::ceil(lo / step) * step; t <= hi + 1e-9; t += step) {
    a.ticks.push_back(t);
    char b[32];
    std::snprintf(b, sizeof b, "%.0f", t);
    a.labels.push_back(b);
  }
  const double pad = 0.02 * (hi - lo);
  a.lo = lo - pad;
  a.hi = hi + pad;
  return a;
}

double px_x(const Box& area, const XAxis& xa, double x) { return area.x + area.w * (x - xa.lo) / (xa.hi - xa.lo); }
double px_y(const Box& area, const Axis& ya, double y) { return area.y + area.h * (1 - ya.frac(y)); }
bool drawable(const Axis& ya, double y) { return std::isfinite(y) && (!ya.log || y > 0); }

// Points along the panel's lines every few pixels, and its markers: what a legend should not cover.
std::vector<std::pair<double, double>> ink(const Panel& p, const XAxis& xa) {
  std::vector<std::pair<double, double>> pts;
  for (const Series& s : p.series) {
    bool have = false;
    double px = 0, py = 0;
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!drawable(p.y, s.y[i])) {
        have = false;
        continue;
      }
      const double qx = px_x(p.area, xa, s.x[i]), qy = px_y(p.area, p.y, s.y[i]);
      if (have) {
        const int n = std::max(1, int(std::hypot(qx - px, qy - py) / 4));
        for (int k = 1; k <= n; ++k) pts.push_back({px + (qx - px) * k / n, py + (qy - py) * k / n});
      }
      pts.push_back({qx, qy});
      px = qx;
      py = qy;
      have = true;
    }
  }
  return pts;
}

struct LegendSize {
  double w = 0, h = 0;
};
constexpr double kRow = 18, kSample = 30, kPad = 7;

LegendSize legend_size(const Panel& p) {
  LegendSize s;
  double text = 0;
  for (const Series& se : p.series) text = std::max(text, text_width(se.label, kLegendFont));
  s.w = kPad + kSample + 6 + text + kPad;
  s.h = 2 * kPad + kRow * double(p.series.size()) - (kRow - kLegendFont) + 2;
  return s;
}

// matplotlib's loc="best": the first of its candidate places that covers no line or marker; none: outside,
// to the right of the panel (the caller widens the figure).
void place_legend(Panel& p, const XAxis& xa) {
  const LegendSize s = legend_size(p);
  p.legend.w = s.w;
  p.legend.h = s.h;
  const auto pts = ink(p, xa);
  // upper right, upper left, lower left, lower right, right, center left, center right, lower center,
  // upper center, center
  const double fx[] = {1, 0, 0, 1, 1, 0, 1, 0.5, 0.5, 0.5};
  const double fy[] = {0, 0, 1, 1, 0.5, 0.5, 0.5, 1, 0, 0.5};
  const double m = 8;
  if (s.w + 2 * m <= p.area.w && s.h + 2 * m <= p.area.h) {
    for (int c = 0; c < 10; ++c) {
      Box b;
      b.w = s.w;
      b.h = s.h;
      b.x = p.area.x + m + fx[c] * (p.area.w - s.w - 2 * m);
      b.y = p.area.y + m + fy[c] * (p.area.h - s.h - 2 * m);
      bool clear = true;
      for (const auto& [x, y] : pts)
        if (b.contains(x, y, 5)) {
          clear = false;
          break;
        }
      if (clear) {
        p.legend = b;
        p.legend_outside = false;
        return;
      }
    }
  }
  p.legend_outside = true;
  p.legend.x = p.area.x + p.area.w + 14;
  p.legend.y = p.area.y;
}

void draw_panel(std::ostringstream& o, const Panel& p, const XAxis& xa, const char* panel_name) {
  const Box& a = p.area;
  o << "<g class=\"panel\" id=\"" << panel_name << "\">\n";
  o << "<rect x=\"" << num(a.x) << "\" y=\"" << num(a.y) << "\" width=\"" << num(a.w) << "\" height=\"" << num(a.h)
    << "\" fill=\"#ffffff\"/>\n";
  // grid (plt.grid(True): solid light grey at every tick)
  o << "<g class=\"grid\" stroke=\"#b0b0b0\" stroke-width=\"0.8\" fill=\"none\">\n";
  for (double t : xa.ticks) {
    const double x = px_x(a, xa, t);
    o << "<line x1=\"" << num(x) << "\" y1=\"" << num(a.y) << "\" x2=\"" << num(x) << "\" y2=\"" << num(a.y + a.h)
      << "\"/>\n";
  }
  for (double t : p.y.ticks) {
    const double y = px_y(a, p.y, t);
    o << "<line x1=\"" << num(a.x) << "\" y1=\"" << num(y) << "\" x2=\"" << num(a.x + a.w) << "\" y2=\"" << num(y)
      << "\"/>\n";
  }
  o << "</g>\n";
  // the lines, then their markers
  for (const Series& s : p.series) {
    std::ostringstream d;
    bool pen = false;
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!drawable(p.y, s.y[i])) {
        pen = false;
        continue;
      }
      d << (d.tellp() > 0 ? " " : "") << (pen ? "L" : "M") << num(px_x(a, xa, s.x[i])) << ","
        << num(px_y(a, p.y, s.y[i]));
      pen = true;
    }
    o << "<path class=\"series\" data-panel=\"" << panel_name << "\" data-run=\"" << xml_escape(s.run)
      << "\" data-column=\"" << xml_escape(s.column) << "\" data-label=\"" << xml_escape(s.label) << "\" d=\""
      << d.str() << "\" fill=\"none\" stroke=\"" << s.color << "\" stroke-width=\"1.5\" stroke-linejoin=\"round\""
      << " stroke-linecap=\"round\"" << (s.dashed ? " stroke-dasharray=\"5.5,3\"" : "") << "/>\n";
  }
  o << "<g class=\"markers\">\n";
  for (const Series& s : p.series) {
    const int every = mark_every(s.x.size());
    for (size_t i = 0; i < s.x.size(); ++i)
      if (drawable(p.y, s.y[i]) && (i % every == 0 || i + 1 == s.x.size()))
        o << marker_svg(s.marker, px_x(a, xa, s.x[i]), px_y(a, p.y, s.y[i]), s.color) << "\n";
  }
  o << "</g>\n";
  // frame, ticks, tick labels
  o << "<rect x=\"" << num(a.x) << "\" y=\"" << num(a.y) << "\" width=\"" << num(a.w) << "\" height=\"" << num(a.h)
    << "\" fill=\"none\" stroke=\"#000000\" stroke-width=\"0.8\"/>\n";
  o << "<g class=\"ticks\" stroke=\"#000000\" stroke-width=\"0.8\">\n";
  for (double t : xa.ticks) {
    const double x = px_x(a, xa, t);
    o << "<line x1=\"" << num(x) << "\" y1=\"" << num(a.y + a.h) << "\" x2=\"" << num(x) << "\" y2=\""
      << num(a.y + a.h + 3.5) << "\"/>\n";
  }
  for (double t : p.y.ticks) {
    const double y = px_y(a, p.y, t);
    o << "<line x1=\"" << num(a.x - 3.5) << "\" y1=\"" << num(y) << "\" x2=\"" << num(a.x) << "\" y2=\"" << num(y)
      << "\"/>\n";
  }
  o << "</g>\n";
  o << "<g class=\"ticklabels\" font-family=\"" << kFont << "\" font-size=\"" << kTickFont << "\" fill=\"#000000\">\n";
  for (size_t i = 0; i < p.y.ticks.size(); ++i)
    o << "<text x=\"" << num(a.x - 6) << "\" y=\"" << num(px_y(a, p.y, p.y.ticks[i]) + kTickFont * 0.35)
      << "\" text-anchor=\"end\">" << xml_escape(p.y.labels[i]) << "</text>\n";
  if (p.xlabels)
    for (size_t i = 0; i < xa.ticks.size(); ++i)
      o << "<text x=\"" << num(px_x(a, xa, xa.ticks[i])) << "\" y=\"" << num(a.y + a.h + 5 + kTickFont)
        << "\" text-anchor=\"middle\">" << xml_escape(xa.labels[i]) << "</text>\n";
  o << "</g>\n";
  if (!p.ylabel.empty()) {
    double widest = 0;
    for (const auto& l : p.y.labels) widest = std::max(widest, text_width(l, kTickFont));
    const double x = a.x - 6 - widest - 8, y = a.y + a.h / 2;
    o << "<text class=\"ylabel\" x=\"" << num(x) << "\" y=\"" << num(y) << "\" transform=\"rotate(-90 " << num(x) << " "
      << num(y) << ")\" text-anchor=\"middle\" font-family=\"" << kFont << "\" font-size=\"" << kLabelFont << "\">"
      << xml_escape(p.ylabel) << "</text>\n";
  }
  if (p.series.empty()) {  // nothing to plot (a history.csv of epoch, lr and seconds only)
    o << "</g>\n";
    return;
  }
  // legend
  const Box& l = p.legend;
  o << "<g class=\"legend\" data-panel=\"" << panel_name << "\">\n";
  o << "<rect x=\"" << num(l.x) << "\" y=\"" << num(l.y) << "\" width=\"" << num(l.w) << "\" height=\"" << num(l.h)
    << "\" rx=\"3\" fill=\"#ffffff\" fill-opacity=\"0.85\" stroke=\"#cccccc\" stroke-width=\"0.8\"/>\n";
  for (size_t i = 0; i < p.series.size(); ++i) {
    const Series& s = p.series[i];
    const double cy = l.y + kPad + 1 + kLegendFont / 2 + kRow * double(i);
    o << "<line x1=\"" << num(l.x + kPad) << "\" y1=\"" << num(cy) << "\" x2=\"" << num(l.x + kPad + kSample)
      << "\" y2=\"" << num(cy) << "\" stroke=\"" << s.color << "\" stroke-width=\"1.5\""
      << (s.dashed ? " stroke-dasharray=\"5.5,3\"" : "") << "/>";
    o << marker_svg(s.marker, l.x + kPad + kSample / 2, cy, s.color);
    o << "<text class=\"legend-label\" x=\"" << num(l.x + kPad + kSample + 6) << "\" y=\""
      << num(cy + kLegendFont * 0.35) << "\" font-family=\"" << kFont << "\" font-size=\"" << kLegendFont << "\">"
      << xml_escape(s.label) << "</text>\n";
  }
  o << "</g>\n</g>\n";
}

}  // namespace

int History::column(const std::string& n) const {
  for (size_t i = 0; i < columns.size(); ++i)
    if (columns[i] == n) return int(i);
  return -1;
}

History read_history(const std::string& arg) {
  History h;
  std::error_code ec;
  const fs::path p(arg);
  if (fs::is_directory(p, ec)) {
    h.file = (p / "history.csv").string();
    if (!fs::exists(h.file, ec))
      throw UserError(str_cat(h.file, ": no such file: ", arg,
                              " is not a run directory of `lockstep train` (expected RUN_DIR/history.csv)"));
  } else if (fs::exists(p, ec)) {
    h.file = arg;  // a history.csv given directly
  } else {
    throw UserError(str_cat(arg, ": no such run directory (expected a directory holding history.csv, written by "
                                 "`lockstep train --run-dir DIR`)"));
  }
  std::ifstream f(h.file, std::ios::binary);
  if (!f) throw UserError(str_cat(h.file, ": cannot read (", std::strerror(errno), ")"));
  std::string line;
  int lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (trim(line).empty()) continue;
    std::vector<std::string> cells = split_csv(line);
    if (h.columns.empty()) {
      h.columns = cells;
      if (h.column("epoch") != 0)
        throw UserError(str_cat(h.file, ":", lineno, ": not a history.csv header (expected epoch,loss,...; got '",
                                line.substr(0, 80), "')"));
      std::set<std::string> seen;
      for (const auto& c : h.columns) {
        if (c.empty()) throw UserError(str_cat(h.file, ":", lineno, ": an empty column name in the header"));
        if (!seen.insert(c).second) throw UserError(str_cat(h.file, ":", lineno, ": column '", c, "' appears twice"));
      }
      continue;
    }
    if (cells.size() != h.columns.size())
      throw UserError(str_cat(h.file, ":", lineno, ": ", cells.size(), " cells, but the header has ", h.columns.size(),
                              " (", h.columns.front(), ",...,", h.columns.back(), ")"));
    std::vector<double> row(cells.size());
    for (size_t i = 0; i < cells.size(); ++i)
      if (!parse_number(cells[i], &row[i]))
        throw UserError(str_cat(h.file, ":", lineno, ": column '", h.columns[i], "': '", cells[i].substr(0, 40),
                                "' is not a number"));
    if (!std::isfinite(row[0]))
      throw UserError(str_cat(h.file, ":", lineno, ": the epoch is missing"));
    h.rows.push_back(std::move(row));
  }
  if (f.bad()) throw UserError(str_cat(h.file, ": cannot read (", std::strerror(errno), ")"));
  if (h.columns.empty()) throw UserError(str_cat(h.file, ": empty (expected the header epoch,loss,... and one row per epoch)"));
  if (h.rows.empty()) throw UserError(str_cat(h.file, ": no epoch recorded yet (only the header)"));
  return h;
}

void name_runs(std::vector<History>& runs, const std::vector<std::string>& args) {
  // Path components of each run directory (the CSV's parent when a file was given), last first.
  std::vector<std::vector<std::string>> parts(runs.size());
  for (size_t i = 0; i < runs.size(); ++i) {
    fs::path p = fs::path(runs[i].file).parent_path();
    if (p.empty()) p = ".";
    p = fs::weakly_canonical(fs::absolute(p));
    for (auto it = p.end(); it != p.begin();) {
      --it;
      const std::string c = it->string();
      if (!c.empty() && c != "/") parts[i].push_back(c);
    }
    if (parts[i].empty()) parts[i].push_back(args[i]);
  }
  std::vector<size_t> depth(runs.size(), 1);
  auto label = [&](size_t i) {
    std::string s;
    for (size_t k = std::min(depth[i], parts[i].size()); k-- > 0;) s += (s.empty() ? "" : "/") + parts[i][k];
    return s;
  };
  // Two different directories labelled alike both get one more parent, until none are (the same
  // directory given twice stays alike: "#2" below).
  for (int round = 0; round < 64; ++round) {
    std::vector<size_t> bump;
    for (size_t i = 0; i < runs.size(); ++i)
      for (size_t j = 0; j < runs.size(); ++j)
        if (i != j && parts[i] != parts[j] && label(i) == label(j) && depth[i] < parts[i].size()) {
          bump.push_back(i);
          break;
        }
    if (bump.empty()) break;
    for (size_t i : bump) ++depth[i];
  }
  std::map<std::string, int> count;
  for (size_t i = 0; i < runs.size(); ++i) {
    runs[i].name = label(i);
    const int n = ++count[runs[i].name];
    if (n > 1) runs[i].name += str_cat(" #", n);  // the same directory twice
  }
}

Figure render_svg(const std::vector<History>& runs) {
  const bool several = runs.size() > 1;
  // The learning-rate panel: only when the rate is not the same everywhere.
  bool lr_changes = false;
  {
    double first = kNaN;
    for (const History& h : runs) {
      const int c = h.column("lr");
      if (c < 0) continue;
      for (const auto& r : h.rows) {
        if (!std::isfinite(r[c])) continue;
        if (std::isnan(first)) first = r[c];
        else if (std::fabs(r[c] - first) > 1e-12 * std::max(std::fabs(first), std::fabs(r[c]))) lr_changes = true;
      }
    }
  }
  std::vector<Series> main_series, lr_series;
  double xlo = std::numeric_limits<double>::infinity(), xhi = -xlo;
  int color = 0;
  for (size_t ri = 0; ri < runs.size(); ++ri) {
    const History& h = runs[ri];
    const int run_color = color;  // the run's learning rate: the colour of its first curve
    auto make = [&](size_t c) {
      Series s;
      s.run = h.name;
      s.column = h.columns[c];
      s.label = several ? h.name + ": " + s.column : s.column;
      s.dashed = s.column.rfind("val_", 0) == 0;
      s.marker = int(ri);
      for (const auto& r : h.rows) {
        s.x.push_back(r[0]);
        s.y.push_back(r[c]);
      }
      return s;
    };
    for (const auto& r : h.rows) {
      xlo = std::min(xlo, r[0]);
      xhi = std::max(xhi, r[0]);
    }
    for (size_t c = 1; c < h.columns.size(); ++c) {
      const std::string& name = h.columns[c];
      if (name == "seconds" || name == "lr") continue;
      Series s = make(c);
      if (std::none_of(s.y.begin(), s.y.end(), [](double v) { return std::isfinite(v); })) continue;  // e.g. no validation
      s.color = kColors[color++ % 10];
      main_series.push_back(std::move(s));
    }
    const int lc = h.column("lr");
    if (lr_changes && lc >= 0) {
      Series s = make(size_t(lc));
      if (std::any_of(s.y.begin(), s.y.end(), [](double v) { return std::isfinite(v); })) {
        s.label = several ? h.name + ": learning rate" : "learning rate";
        s.color = kColors[run_color % 10];
        lr_series.push_back(std::move(s));
      }
    }
  }

  {
    std::set<std::string> colors;
    for (const Series& s : lr_series) colors.insert(s.color);
    if (colors.size() < lr_series.size())
      for (size_t i = 0; i < lr_series.size(); ++i) lr_series[i].color = kColors[i % 10];
  }
  // y axes
  Panel top, bottom;
  top.series = std::move(main_series);
  bottom.series = std::move(lr_series);
  const bool with_lr = !bottom.series.empty();
  {
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (const Series& s : top.series)
      for (double v : s.y)
        if (std::isfinite(v)) {
          lo = std::min(lo, v);
          hi = std::max(hi, v);
        }
    if (!std::isfinite(lo)) lo = 0, hi = 1;
    top.y = (lo >= 0 && hi <= 1) ? unit_axis() : linear_axis(lo, hi, with_lr ? 7 : 8, lo >= 0);
  }
  Figure fig;
  if (with_lr) {
    double lo = std::numeric_limits<double>::infinity(), hi = -lo, pos = lo;
    for (const Series& s : bottom.series)
      for (double v : s.y)
        if (std::isfinite(v)) {
          lo = std::min(lo, v);
          hi = std::max(hi, v);
          if (v > 0) pos = std::min(pos, v);
        }
    fig.lr_log = std::isfinite(pos) && hi > 10 * pos * (1 + 1e-9);
    bottom.y = fig.lr_log ? log_axis(pos, hi) : linear_axis(lo, hi, 4, lo >= 0);
    bottom.ylabel = "learning rate";
  }

  // layout: figsize (8, 5) at 100 dpi for the loss/metrics panel, 190 px more for the learning rate
  const double W = 800, top_h = with_lr ? 390 : 420, lr_h = 150, gap = 24;
  double widest = 0;
  for (const auto& l : top.y.labels) widest = std::max(widest, text_width(l, kTickFont));
  for (const auto& l : bottom.y.labels) widest = std::max(widest, text_width(l, kTickFont));
  const double left = std::ceil(6 + widest + 8 + (with_lr ? kLabelFont + 8 : 0) + 6);
  const double right = 24, top_margin = 24;
  const double plot_w = W - left - right;
  top.area = {left, top_margin, plot_w, top_h};
  top.xlabels = !with_lr;
  if (with_lr) {
    bottom.area = {left, top_margin + top_h + gap, plot_w, lr_h};
    bottom.xlabels = true;
  }
  const Box& last = with_lr ? bottom.area : top.area;
  const double xlabel_y = last.y + last.h + 5 + kTickFont + 8 + kLabelFont;
  double H = xlabel_y + 14;

  const XAxis xa = epoch_axis(xlo, xhi);
  place_legend(top, xa);
  if (with_lr) place_legend(bottom, xa);
  double width = W;
  for (const Panel* p : {&top, &bottom}) {
    if (p->series.empty() || !p->legend_outside) continue;
    width = std::max(width, p->legend.x + p->legend.w + 16);
    H = std::max(H, p->legend.y + p->legend.h + 16);
  }
  if (with_lr && top.legend_outside && bottom.legend_outside && top.legend.y + top.legend.h + 10 > bottom.legend.y) {
    bottom.legend.y = top.legend.y + top.legend.h + 10;  // a long legend beside the top panel: the next below it
    H = std::max(H, bottom.legend.y + bottom.legend.h + 16);
  }

  std::ostringstream o;
  o << "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n";
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"" << num(width) << "\" height=\"" << num(H)
    << "\" viewBox=\"0 0 " << num(width) << " " << num(H) << "\">\n";
  std::string title = "Learning curves";
  for (size_t i = 0; i < runs.size(); ++i) title += (i ? ", " : ": ") + runs[i].name;
  o << "<title>" << xml_escape(title) << "</title>\n";
  o << "<desc>lockstep plot: history.csv by epoch";
  for (const History& h : runs) o << "; " << xml_escape(h.file);
  o << "</desc>\n";
  o << "<rect class=\"background\" x=\"0\" y=\"0\" width=\"" << num(width) << "\" height=\"" << num(H)
    << "\" fill=\"#ffffff\"/>\n";
  draw_panel(o, top, xa, "metrics");
  if (with_lr) draw_panel(o, bottom, xa, "learning-rate");
  o << "<text class=\"xlabel\" x=\"" << num(last.x + last.w / 2) << "\" y=\"" << num(xlabel_y)
    << "\" text-anchor=\"middle\" font-family=\"" << kFont << "\" font-size=\"" << kLabelFont << "\">epoch</text>\n";
  o << "</svg>\n";
  fig.svg = o.str();
  fig.series = int(top.series.size());
  fig.lr_series = int(bottom.series.size());
  return fig;
}

namespace {

std::string find_program(const std::string& name) {
  const char* path = std::getenv("PATH");
  if (!path) return "";
  std::istringstream is(path);
  std::string dir;
  while (std::getline(is, dir, ':')) {
    const std::string cand = (dir.empty() ? std::string(".") : dir) + "/" + name;
    struct stat st{};
    if (::stat(cand.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(cand.c_str(), X_OK) == 0) return cand;
  }
  return "";
}

// rsvg-convert -o PNG SVG; "" on success, else why not.
std::string convert_png(const std::string& exe, const std::string& svg, const std::string& png) {
  std::vector<std::string> args = {"rsvg-convert", "--format=png", "--output=" + png, svg};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv.data(), environ);
  if (rc != 0) return str_cat("cannot run ", exe, " (", std::strerror(rc), ")");
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return str_cat("waiting for ", exe, ": ", std::strerror(errno));
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return "";
  return WIFEXITED(status) ? str_cat(exe, " exited with status ", WEXITSTATUS(status))
                           : str_cat(exe, " was killed by signal ", WTERMSIG(status));
}

}  // namespace

Written plot_runs(const std::vector<std::string>& run_dirs, const std::string& out) {
  if (run_dirs.empty()) throw UserError("plot: at least one RUN_DIR is required (lockstep plot RUN_DIR... --out curves.svg)");
  if (out.empty()) throw UserError("plot: --out FILE.svg is required");
  std::string ext = fs::path(out).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  if (ext != ".svg" && ext != ".png")
    throw UserError(str_cat(out, ": --out must end in .svg (or .png: the SVG is written next to it)"));
  const std::string rsvg = find_program("rsvg-convert");
  const std::string how = "install librsvg2-bin (apt-get install librsvg2-bin) for rsvg-convert";
  if (ext == ".png" && rsvg.empty())
    throw UserError(str_cat(out, ": a PNG needs rsvg-convert, which is not on PATH: ", how, ", or use --out ",
                            fs::path(out).replace_extension(".svg").string()));

  std::vector<History> runs;
  for (const auto& d : run_dirs) runs.push_back(read_history(d));
  name_runs(runs, run_dirs);

  Written w;
  w.figure = render_svg(runs);
  w.svg = ext == ".svg" ? out : fs::path(out).replace_extension(".svg").string();
  {
    errno = 0;
    std::ofstream f(w.svg, std::ios::binary | std::ios::trunc);
    if (!f) throw UserError(str_cat(w.svg, ": cannot write (", errno ? std::strerror(errno) : "cannot open", ")"));
    f << w.figure.svg;
    f.close();
    if (!f) throw UserError(str_cat(w.svg, ": cannot write (", errno ? std::strerror(errno) : "write failed", ")"));
  }
  const std::string what =
      str_cat(runs.size(), runs.size() == 1 ? " run, " : " runs, ", w.figure.series, " curves",
              w.figure.lr_series ? str_cat(", learning rate below", w.figure.lr_log ? " (log scale)" : "") : "");
  std::ostringstream msg;
  if (!rsvg.empty()) {
    const std::string png = fs::path(w.svg).replace_extension(".png").string();
    const std::string err = convert_png(rsvg, w.svg, png);
    if (err.empty()) {
      w.png = png;
      msg << "Wrote " << w.svg << " and " << w.png << " (" << what << ")\n";
    } else {
      if (ext == ".png") throw std::runtime_error(str_cat(png, ": cannot write: ", err, " (the SVG is in ", w.svg, ")"));
      msg << "Wrote " << w.svg << " (" << what << "); no PNG: " << err << "\n";
    }
  } else {
    msg << "Wrote " << w.svg << " (" << what << "); only the SVG: rsvg-convert is not on PATH. For a PNG too, "
        << how << " and run this again.\n";
  }
  w.message = msg.str();
  return w;
}

}  // namespace lockstep::plot
