package release_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/drover/drover/internal/release"
)

// TestLineWriterCutsLongLines: a line longer than MaxLine, written in
// pieces, comes out as its first MaxLine bytes and a marker with what was
// cut (never half a UTF-8 character); the next line is whole.
func TestLineWriterCutsLongLines(t *testing.T) {
	var got []string
	w := release.NewLineWriter(func(l string) { got = append(got, l) })
	long := "x" + strings.Repeat("é", release.MaxLine) // 1 + 2*MaxLine bytes; MaxLine-1 kept
	for i := 0; i < len(long); i += 1000 {
		w.Write([]byte(long[i:min(i+1000, len(long))]))
	}
	w.Write([]byte("\nEND\nlast"))
	w.Flush()
	if len(got) != 3 || got[1] != "END" || got[2] != "last" {
		t.Fatalf("want the cut line, END, last; got %d lines", len(got))
	}
	cut, ok := strings.CutSuffix(got[0], " … [cut 65538 bytes]")
	if !ok || len(cut) != release.MaxLine-1 || !utf8.ValidString(cut) {
		t.Errorf("cut line: %d bytes, valid UTF-8 %v, ends %q", len(cut), utf8.ValidString(cut), got[0][len(got[0])-40:])
	}
}
