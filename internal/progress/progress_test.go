package progress_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/progress"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/rollout"
	"github.com/drover/drover/internal/testenv/apptest"
	"github.com/drover/drover/internal/transport"
)

func TestClean(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain text", "plain text"},
		{"tab\tstays", "tab\tstays"},
		{"héllo — ✓ 日本語", "héllo — ✓ 日本語"},
		{"\x1b]0;pwned\x07title", "title"},
		{"\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\", "link"},
		{"\x1b]0;unterminated", ""},
		{"a\x1b[2Jb", "ab"},
		{"\x1b[1;31mred\x1b[0m", "red"},
		{"\x1b[?1049h\x1b[38;5;196mx", "x"},
		{"reset\x1bc", "reset"},
		{"\x1bP1$r0m\x1b\\dcs", "dcs"},
		{"\x1b_apc\x1b\\after", "after"},
		{"bell\a nul\x00 bs\b del\x7f cr\r", "bell nul bs del cr"},
		{"c1 \u009b2J and \u009d0;x\u009c", "c1 2J and 0;x"},
		{"raw \x9b2J byte", "raw \ufffd2J byte"},
		{"esc at end\x1b", "esc at end"},
		{"\x1b[", ""},
	}
	for _, tc := range tests {
		if got := progress.Clean(tc.in); got != tc.want {
			t.Errorf("Clean(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// hostile is a hook that tries to take over the deployer's terminal: it
// sets the window title and clears the screen, then fails doing it again.
const hostile = `printf '\033]0;pwned\007building\033[2J done\n'
printf 'broke\033]0;pwned\007\033[2J\n' >&2
exit 1
`

// TestHookOutputReachesNoTerminalRaw deploys with a hook that prints
// escape sequences, then fails printing more: neither the live output (plain
// and TTY), the summary with its failure tail, nor the log file holds them.
func TestHookOutputReachesNoTerminalRaw(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", t.TempDir())
	a := apptest.New(t, apptest.Options{NoService: true, Extra: "  evil: {when: prepare, commands: [sh evil.sh]}\n"})
	a.Repo.Commit("a hostile hook", map[string]string{"evil.sh": hostile})
	env := a.Config.Environments["test"]
	set, errs := transport.Open(context.Background(), env.Hosts, transport.Options{Binary: apptest.DroverBinary(t)})
	if len(errs) > 0 {
		t.Fatal(errs[0])
	}
	t.Cleanup(set.Close)
	for i, tty := range []bool{false, true} {
		var out bytes.Buffer
		logf, err := progress.LogFile(a.Config.App, env.Name, "test")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { logf.Close() })
		r := progress.New(&out, tty, logf, []string{env.Hosts[0].Name})
		plan := &rollout.Plan{App: a.Config, Env: env, ID: release.NewID(time.Unix(int64(i+1)*1000, 0), a.Repo.Head()), Commit: a.Repo.Head(), Spec: "branch:main", By: "test@here", Strategy: config.Strategy{Type: config.StrategyAllAtOnce}}
		rep, err := rollout.Deploy(context.Background(), plan, set.Targets(), r)
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
		if rep.OK() {
			t.Fatal("the failing hook did not fail the deploy")
		}
		progress.Summary(&out, rep)
		logged, err := os.ReadFile(logf.Name())
		if err != nil {
			t.Fatal(err)
		}
		for what, text := range map[string]string{"output": out.String(), "log": string(logged)} {
			for _, bad := range []string{"\x1b]", "\a", "pwned", "\x1b[2J"} {
				if strings.Contains(text, bad) {
					t.Errorf("tty=%v: %s holds %q:\n%q", tty, what, bad, text)
				}
			}
			if !strings.Contains(text, "broke") || (!tty || what == "log") && !strings.Contains(text, "building done") {
				t.Errorf("tty=%v: %s lost the hook's text:\n%q", tty, what, text)
			}
		}
	}
}

// TestLogFilePrivate: a rollout's log holds hook output (secrets printed by
// mistake, connection strings): only its owner reads it.
func TestLogFilePrivate(t *testing.T) {
	state := t.TempDir()
	t.Setenv("XDG_STATE_HOME", state)
	dir := filepath.Join(state, "drover", "logs")
	// A directory left open by an older drover is closed again.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := progress.LogFile("shop", "production", "20261122T101500Z-3f9c2ab")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if m := fi.Mode().Perm(); m != 0o600 {
		t.Errorf("log file mode %o, want 600", m)
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m := di.Mode().Perm(); m != 0o700 {
		t.Errorf("log directory mode %o, want 700", m)
	}
}

// FuzzClean: whatever a host prints, what Clean leaves is valid UTF-8 with
// no control character but tab.
func FuzzClean(f *testing.F) {
	f.Add("\x1b]0;pwned\x07\x1b[2J text")
	f.Add("\x1bP\x1b\\\u009b\x9b\t日本")
	f.Fuzz(func(t *testing.T, s string) {
		out := progress.Clean(s)
		if !utf8.ValidString(out) {
			t.Fatalf("Clean(%q) = %q, not UTF-8", s, out)
		}
		for _, r := range out {
			if r != '\t' && (r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f)) {
				t.Fatalf("Clean(%q) = %q keeps control %U", s, out, r)
			}
		}
	})
}

// TestSummaryNamesSkippedHooks: a run_once hook left out with --skip is in
// the summary, so nobody believes the migration ran.
func TestSummaryNamesSkippedHooks(t *testing.T) {
	var out bytes.Buffer
	progress.Summary(&out, &rollout.Report{
		Hosts:        []*rollout.HostResult{{Host: "web2", State: rollout.StateOK, Phase: "activate"}},
		SkippedHooks: []rollout.SkippedHook{{Hook: "migrate", Stage: "before_activate", Role: "db"}},
	})
	if !strings.Contains(out.String(), "skipped run_once hook migrate (before_activate, role db): --skip migrate") {
		t.Errorf("summary does not name the skipped hook:\n%s", out.String())
	}
}
