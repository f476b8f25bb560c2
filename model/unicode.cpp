// UTF-8 handling, character classes and NFC (UAX #15) on top of the generated tables.
#include "model/unicode.h"

#include <algorithm>

#include "kernels/common/error.h"
#include "model/unicode_tables.h"

namespace kvcal {
namespace {

namespace ut = unicode_tables;

// Decodes one sequence starting at p[0]. Returns the number of bytes of the longest valid prefix
// (at least 1) and sets `ok` when that prefix is a complete code point. The byte ranges are those
// of Unicode Table 3-7, which is also what makes "maximal subpart" replacement work.
std::size_t decode_one(const unsigned char* p, std::size_t n, char32_t& cp, bool& ok) {
  ok = false;
  const unsigned char b0 = p[0];
  if (b0 < 0x80) {
    cp = b0;
    ok = true;
    return 1;
  }
  std::size_t len = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2;
    cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3;
    cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4;
    cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 1;
  }
  for (std::size_t k = 1; k < len; ++k) {
    if (k >= n) return k;
    const unsigned char b = p[k];
    const unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) return k;
    cp = (cp << 6) | (b & 0x3F);
  }
  ok = true;
  return len;
}

bool in_ranges(const ut::codepoint_range* r, std::size_t n, char32_t cp) {
  const ut::codepoint_range* end = r + n;
  const ut::codepoint_range* it =
      std::upper_bound(r, end, cp, [](char32_t c, const ut::codepoint_range& x) { return c < x.first; });
  return it != r && cp <= (it - 1)->last;
}

// Hangul syllables decompose and compose algorithmically (Unicode 3.12).
constexpr char32_t s_base = 0xAC00, l_base = 0x1100, v_base = 0x1161, t_base = 0x11A7;
constexpr char32_t l_count = 19, v_count = 21, t_count = 28, n_count = v_count * t_count,
                   s_count = l_count * n_count;

int combining_class(char32_t cp) {
  if (cp < 0x300) return 0;
  const auto* b = ut::combining_class;
  const auto* e = b + ut::combining_class_size;
  const auto* it =
      std::upper_bound(b, e, cp, [](char32_t c, const ut::combining_class_range& x) { return c < x.first; });
  return it != b && cp <= (it - 1)->last ? (it - 1)->ccc : 0;
}

void decompose(char32_t cp, std::u32string& out) {
  if (cp >= s_base && cp < s_base + s_count) {
    const char32_t s = cp - s_base;
    out.push_back(l_base + s / n_count);
    out.push_back(v_base + (s % n_count) / t_count);
    if (s % t_count != 0) out.push_back(t_base + s % t_count);
    return;
  }
  const auto* b = ut::decomposition;
  const auto* e = b + ut::decomposition_size;
  const auto* it =
      std::lower_bound(b, e, cp, [](const ut::decomposition_entry& x, char32_t c) { return x.cp < c; });
  if (it == e || it->cp != cp) {
    out.push_back(cp);
    return;
  }
  decompose(it->first, out);  // mappings are themselves decomposable (full decomposition)
  if (it->second != 0) decompose(it->second, out);
}

// Returns 0 when (a, b) has no primary composite.
char32_t compose(char32_t a, char32_t b) {
  if (a >= l_base && a < l_base + l_count && b >= v_base && b < v_base + v_count)
    return s_base + ((a - l_base) * v_count + (b - v_base)) * t_count;
  if (a >= s_base && a < s_base + s_count && (a - s_base) % t_count == 0 && b > t_base &&
      b < t_base + t_count)
    return a + (b - t_base);
  const auto* bgn = ut::composition;
  const auto* e = bgn + ut::composition_size;
  const auto* it = std::lower_bound(bgn, e, std::make_pair(a, b),
                                    [](const ut::composition_entry& x, const std::pair<char32_t, char32_t>& k) {
                                      return x.first < k.first || (x.first == k.first && x.second < k.second);
                                    });
  return it != e && it->first == a && it->second == b ? it->composite : 0;
}

}  // namespace

std::u32string utf8_decode(std::string_view bytes, std::string_view what) {
  std::u32string out;
  out.reserve(bytes.size());
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  std::size_t i = 0;
  while (i < bytes.size()) {
    char32_t cp = 0;
    bool ok = false;
    const std::size_t len = decode_one(p + i, bytes.size() - i, cp, ok);
    KVCAL_CHECK(ok, what, ": invalid UTF-8 at byte ", i, " (byte 0x", std::hex,
                static_cast<int>(p[i]), std::dec, ")");
    out.push_back(cp);
    i += len;
  }
  return out;
}

bool utf8_valid(std::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  for (std::size_t i = 0; i < bytes.size();) {
    char32_t cp = 0;
    bool ok = false;
    i += decode_one(p + i, bytes.size() - i, cp, ok);
    if (!ok) return false;
  }
  return true;
}

void utf8_append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string utf8_encode(std::u32string_view cps) {
  std::string out;
  out.reserve(cps.size());
  for (char32_t c : cps) utf8_append(out, c);
  return out;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  for (std::size_t i = 0; i < bytes.size();) {
    char32_t cp = 0;
    bool ok = false;
    const std::size_t len = decode_one(p + i, bytes.size() - i, cp, ok);
    if (ok)
      out.append(bytes.substr(i, len));
    else
      out.append("\xEF\xBF\xBD");
    i += len;
  }
  return out;
}

bool is_letter(char32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return in_ranges(ut::letter, ut::letter_size, cp);
}

bool is_number(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return in_ranges(ut::number, ut::number_size, cp);
}

bool is_whitespace(char32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  return in_ranges(ut::whitespace, ut::whitespace_size, cp);
}

std::string nfc(std::string_view text) {
  // Below U+0300 nothing decomposes into a different composition and nothing combines.
  bool trivial = true;
  for (unsigned char c : text) {
    if (c >= 0xCC) {  // lead bytes of U+0300 and above
      trivial = false;
      break;
    }
  }
  if (trivial) return std::string(text);

  const std::u32string in = utf8_decode(text, "NFC normalizer input");
  std::u32string d;
  d.reserve(in.size() + 8);
  for (char32_t c : in) decompose(c, d);

  // Canonical ordering: stable sort of every run of non-starters by combining class.
  for (std::size_t i = 0; i < d.size();) {
    if (combining_class(d[i]) == 0) {
      ++i;
      continue;
    }
    std::size_t j = i;
    while (j < d.size() && combining_class(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + static_cast<std::ptrdiff_t>(i), d.begin() + static_cast<std::ptrdiff_t>(j),
                     [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }

  // Canonical composition (UAX #15 reference algorithm).
  std::u32string out;
  out.reserve(d.size());
  std::ptrdiff_t starter = -1;
  int last_class = 0;
  for (char32_t c : d) {
    const int cls = combining_class(c);
    if (starter >= 0 && (last_class < cls || last_class == 0)) {
      const char32_t comp = compose(out[static_cast<std::size_t>(starter)], c);
      if (comp != 0) {
        out[static_cast<std::size_t>(starter)] = comp;
        continue;
      }
    }
    if (cls == 0) starter = static_cast<std::ptrdiff_t>(out.size());
    // A non-starter before any starter blocks nothing behind it but can never start a composition.
    last_class = (cls != 0 && starter < 0) ? 256 : cls;
    out.push_back(c);
  }
  return utf8_encode(out);
}

}  // namespace kvcal
