package cli

import (
	"errors"
	"strings"
	"testing"

	"github.com/drover/drover/internal/config"
)

// TestPushServerChoice: DROVER_SERVER wins over drover.yml's server:,
// DROVER_SERVER=off deploys without any server, and a DROVER_SERVER drover
// cannot use is a usage error that says so.
func TestPushServerChoice(t *testing.T) {
	app := &config.File{Path: "/repo/drover.yml", Server: "https://queue.internal:8700"}
	for _, tc := range []struct {
		env, file, wantURL, wantFrom, wantErr string
	}{
		{"", "", "", "", ""},
		{"", app.Server, app.Server, "server: in /repo/drover.yml", ""},
		{"http://127.0.0.1:8700", app.Server, "http://127.0.0.1:8700", "DROVER_SERVER", ""},
		{ServerOff, app.Server, "", "", ""},
		{"queue.internal:8700", app.Server, "", "", "DROVER_SERVER=off"},
	} {
		t.Setenv("DROVER_SERVER", tc.env)
		a := *app
		a.Server = tc.file
		url, from, err := pushServer(&a)
		var ue *UsageError
		switch {
		case tc.wantErr != "":
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("DROVER_SERVER=%q: %v, want a usage error saying %q", tc.env, err, tc.wantErr)
			}
		case err != nil || url != tc.wantURL || from != tc.wantFrom:
			t.Errorf("DROVER_SERVER=%q, server: %q: %q from %q (%v), want %q from %q", tc.env, tc.file, url, from, err, tc.wantURL, tc.wantFrom)
		}
	}
}
