package source

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/testenv/gitrepo"
)

// bigMirror makes a repository of n files in nested directories and a warm
// mirror of it.
func bigMirror(b *testing.B, n int) (*Mirror, string) {
	b.Helper()
	repo := gitrepo.New(b)
	for i := range n {
		p := filepath.Join(repo.Dir, fmt.Sprintf("d%02d/s%02d/f%05d.txt", i%50, (i/50)%20, i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(fmt.Sprintf("file %d\n%0200d\n", i, i)), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	sha := repo.Commit("big", nil)
	m := &Mirror{Dir: filepath.Join(b.TempDir(), "repo"), URL: repo.Dir}
	if err := m.Fetch(context.Background()); err != nil {
		b.Fatal(err)
	}
	return m, sha
}

// BenchmarkExport measures writing a 10,000-file commit into a release
// directory from a warm mirror, each method against the baseline
// `git archive | tar -x` run in the same benchmark. It reports the median
// of each and their ratio (export/baseline; target ≤ 1.0).
func BenchmarkExport(b *testing.B) {
	m, sha := bigMirror(b, 10000)
	ctx := context.Background()
	baseline := func(dir string) error {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		cmd := exec.Command("sh", "-c", fmt.Sprintf("git --git-dir %q archive --format=tar %s | tar -x -C %q", m.Dir, sha, dir))
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	for _, method := range []string{ExportArchive, ExportCheckout} {
		b.Run(method, func(b *testing.B) {
			var ours, base []time.Duration
			for i := 0; b.Loop(); i++ {
				root := b.TempDir()
				runBase := func() {
					b.StopTimer()
					syscall.Sync() // start from clean page cache writeback
					b.StartTimer()
					t0 := time.Now()
					if err := baseline(filepath.Join(root, "base")); err != nil {
						b.Fatal(err)
					}
					base = append(base, time.Since(t0))
				}
				runOurs := func() {
					b.StopTimer()
					syscall.Sync()
					b.StartTimer()
					t0 := time.Now()
					if err := m.Export(ctx, sha, filepath.Join(root, "ours"), method); err != nil {
						b.Fatal(err)
					}
					ours = append(ours, time.Since(t0))
				}
				// Alternate the order so neither side always runs second.
				if i%2 == 0 {
					runBase()
					runOurs()
				} else {
					runOurs()
					runBase()
				}
				b.StopTimer()
				if err := os.RemoveAll(root); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			mo, mb := median(ours), median(base)
			b.ReportMetric(float64(mo.Milliseconds()), "ms/export")
			b.ReportMetric(float64(mb.Milliseconds()), "ms/baseline")
			b.ReportMetric(float64(mo)/float64(mb), "ratio")
		})
	}
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
