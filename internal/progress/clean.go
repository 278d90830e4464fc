package progress

import (
	"strings"
	"unicode/utf8"
)

// Clean returns s with what a terminal would act on removed, so that text
// from a host can be shown to a person: escape sequences (CSI like
// "\x1b[2J", OSC like "\x1b]0;title\a", DCS, APC and the rest) go whole,
// other C0 controls, DEL and C1 controls go, and bytes that are not UTF-8
// become U+FFFD. Tabs and printable UTF-8 text stay.
func Clean(s string) string {
	if isPlain(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b.WriteRune(utf8.RuneError)
			i++
		case r == 0x1b:
			i = skipEscape(s, i+1)
		case r == '\t' || !isControl(r):
			b.WriteString(s[i : i+size])
			i += size
		default:
			i += size
		}
	}
	return b.String()
}

// isPlain reports whether s is printable ASCII and tabs: the common case,
// returned as it is.
func isPlain(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\t') || c >= 0x7f {
			return false
		}
	}
	return true
}

func isControl(r rune) bool {
	return r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f)
}

// skipEscape returns the index just past the escape sequence whose ESC is
// at i-1. An unterminated sequence runs to the end of s.
func skipEscape(s string, i int) int {
	if i >= len(s) {
		return i
	}
	switch c := s[i]; {
	case c == '[': // CSI: parameters, intermediates, one final byte
		i++
		for i < len(s) && s[i] >= 0x20 && s[i] <= 0x3f {
			i++
		}
		if i < len(s) && s[i] >= 0x40 && s[i] <= 0x7e {
			i++
		}
		return i
	case c == ']' || c == 'P' || c == 'X' || c == '^' || c == '_': // OSC, DCS, SOS, PM, APC: a string
		return skipString(s, i+1)
	case c >= 0x20 && c <= 0x2f: // intermediates, then one final byte
		for i < len(s) && s[i] >= 0x20 && s[i] <= 0x2f {
			i++
		}
		if i < len(s) && s[i] >= 0x30 && s[i] <= 0x7e {
			i++
		}
		return i
	case c >= 0x30 && c <= 0x7e: // two-byte sequences: ESC c, ESC 7, ESC =
		return i + 1
	}
	return i // a lone ESC
}

// skipString returns the index past the string terminator (BEL, ESC \ or
// C1 ST) of a control string starting at i. Another ESC ends the string
// and starts its own sequence, as terminals do.
func skipString(s string, i int) int {
	for i < len(s) {
		switch {
		case s[i] == 0x07:
			return i + 1
		case s[i] == 0x1b:
			if i+1 < len(s) && s[i+1] == '\\' {
				return i + 2
			}
			return i
		case strings.HasPrefix(s[i:], "\u009c"):
			return i + len("\u009c")
		}
		i++
	}
	return i
}
