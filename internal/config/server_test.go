package config

import (
	"errors"
	"strings"
	"testing"
)

// TestServerKey: server: names the control server push deploys queue on;
// a URL drover cannot use is refused with the file, line and key.
func TestServerKey(t *testing.T) {
	f, err := Parse("drover.yml", []byte("server: https://drover.internal:8700\n"+valid))
	if err != nil {
		t.Fatal(err)
	}
	if f.Server != "https://drover.internal:8700" {
		t.Errorf("server = %q", f.Server)
	}
	if code := f.AtCommit(f); code.Server != f.Server {
		t.Errorf("AtCommit dropped the deployer's server: %q", code.Server)
	}
	for _, tc := range []struct{ value, want string }{
		{`""`, "is empty"},
		{"drover.internal:8700", "must start with https://"},
		{"ftp://drover.internal", "must start with https://"},
		{"https://", "names no host"},
		{"https://admin:secret@drover.internal", "DROVER_TOKEN"},
		{"https://drover.internal/api/v1", "base URL"},
		{"https://drover.internal?token=x", "base URL"},
		{"[1, 2]", "is not a string"},
	} {
		_, err := Parse("drover.yml", []byte(valid+"server: "+tc.value+"\n"))
		var es Errors
		var e *Error
		switch {
		case errors.As(err, &es) && len(es) == 1:
			e = es[0]
		case errors.As(err, &e):
		default:
			t.Errorf("server: %s: got %v, want one error", tc.value, err)
			continue
		}
		line := strings.Count(valid, "\n") + 1
		if e.Line != line || e.Key != "server" || !strings.Contains(e.Msg, tc.want) {
			t.Errorf("server: %s: got %q (line %d, key %q), want line %d, key server, %q", tc.value, e.Error(), e.Line, e.Key, line, tc.want)
		}
	}
}
