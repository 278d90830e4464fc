package cli_test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover/drover/internal/cli"
	"github.com/drover/drover/internal/transport"
)

// TestExecOutputOnTerminalIsClean: what `drover exec` prints from a host
// to a person's terminal carries no control sequences (a title change, a
// cleared screen); piped, it is passed on as the command wrote it.
func TestExecOutputOnTerminalIsClean(t *testing.T) {
	p := newPushApp(t)
	p.repo.Commit("app", map[string]string{"drover.yml": p.yml("log", "  prepare: [true]\n", localHost), "log/.keep": ""})
	if out, err := p.deploy(t, cli.DeployOptions{}); err != nil {
		t.Fatalf("deploy: %v\n%s", err, out)
	}
	evil := `printf 'before\033]0;pwned\007\033[2Jafter\n'`
	for _, tty := range []bool{true, false} {
		var out bytes.Buffer
		o := &cli.ExecOptions{Common: cli.Common{File: filepath.Join(p.repo.Dir, "drover.yml"), Env: "test",
			Transport: transport.Options{Binary: p.bin}, IO: cli.IO{Out: &out, Err: &out, IsTTY: tty}}, Args: []string{evil}}
		if err := cli.Exec(context.Background(), o); err != nil {
			t.Fatalf("exec: %v\n%s", err, out.String())
		}
		got := out.String()
		if !strings.Contains(got, "before") || !strings.Contains(got, "after") {
			t.Fatalf("tty=%v: output %q lost the text", tty, got)
		}
		if hasEsc := strings.Contains(got, "\033"); hasEsc == tty {
			t.Errorf("tty=%v: output %q; want control sequences removed only on a terminal", tty, got)
		}
	}
}

// TestExecLongLine: `drover exec` of a command printing one 20 MB line and
// then END succeeds and shows the line cut with a marker, and END.
func TestExecLongLine(t *testing.T) {
	p := newPushApp(t)
	p.repo.Commit("app", map[string]string{"drover.yml": p.yml("log", "  prepare: [true]\n", localHost), "log/.keep": ""})
	if out, err := p.deploy(t, cli.DeployOptions{}); err != nil {
		t.Fatalf("deploy: %v\n%s", err, out)
	}
	var out bytes.Buffer
	o := &cli.ExecOptions{Common: cli.Common{File: filepath.Join(p.repo.Dir, "drover.yml"), Env: "test",
		Transport: transport.Options{Binary: p.bin}, IO: cli.IO{Out: &out, Err: &out}},
		Args: []string{`head -c 20000000 /dev/zero | tr "\0" a; echo; echo END`}}
	if err := cli.Exec(context.Background(), o); err != nil {
		t.Fatalf("exec: %v\n%.2000s", err, out.String())
	}
	got := out.String()
	if !strings.Contains(got, "[cut ") || !strings.Contains(got, "END") {
		t.Fatalf("want the cut line and END; got %d bytes ending %q", len(got), got[max(0, len(got)-300):])
	}
	if len(got) > 1<<20 {
		t.Errorf("exec printed %d bytes for one cut line", len(got))
	}
}
