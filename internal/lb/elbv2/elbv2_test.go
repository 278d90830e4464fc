package elbv2_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	elb "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"

	"github.com/drover/drover/internal/lb"
	"github.com/drover/drover/internal/lb/elbv2"
	"github.com/drover/drover/internal/lb/lbtest"
	"github.com/drover/drover/internal/testenv/elbv2fake"
)

// client points the real SDK at the fake with static credentials.
func client(f *elbv2fake.Fake) *elb.Client {
	return elb.New(elb.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(f.URL),
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", ""),
	})
}

func start(t *testing.T, opts elbv2fake.Options) (*elbv2fake.Fake, *elbv2.Balancer) {
	f := elbv2fake.Start(t, opts)
	return f, elbv2.New(client(f), f.ARN)
}

func TestConformance(t *testing.T) {
	lbtest.Run(t, func(t *testing.T) lbtest.Fixture {
		f, b := start(t, elbv2fake.Options{Targets: []elbv2fake.Target{{ID: "i-0aaa"}, {ID: "i-0bbb"}, {ID: "10.0.0.7", Port: 8000}}})
		return lbtest.Fixture{Balancer: b, Members: []string{"i-0aaa", "i-0bbb", "10.0.0.7"}, Kill: f.Close}
	})
}

// TestDeregistrationDelay: a drained target is draining (not idle) for the
// group's deregistration delay, then unused and idle; registered again it
// is initial (enabled, not healthy) until its checks pass.
func TestDeregistrationDelay(t *testing.T) {
	_, b := start(t, elbv2fake.Options{Targets: []elbv2fake.Target{{ID: "i-1"}, {ID: "i-2"}}, DeregistrationDelay: time.Second, HealthyAfter: time.Second})
	ctx := context.Background()
	if err := b.Drain(ctx, "i-1"); err != nil {
		t.Fatal(err)
	}
	m := lbtest.Member(t, b, "i-1")
	if m.Enabled || !m.Draining || m.Idle() || !strings.HasPrefix(m.Detail, "draining") {
		t.Errorf("just deregistered: %+v, want draining", m)
	}
	m = lbtest.WaitMember(t, b, "i-1", 10*time.Second, lb.Member.Idle)
	if m.Enabled || m.Draining || !strings.HasPrefix(m.Detail, "unused") {
		t.Errorf("after the delay: %+v, want unused", m)
	}
	if err := b.Enable(ctx, "i-1"); err != nil {
		t.Fatal(err)
	}
	m = lbtest.Member(t, b, "i-1")
	if !m.Enabled || m.Healthy || !strings.HasPrefix(m.Detail, "initial") {
		t.Errorf("just registered: %+v, want initial", m)
	}
	lbtest.WaitMember(t, b, "i-1", 10*time.Second, lb.Member.Serving)
}

// TestRefusesLastHealthyTarget: with one target unhealthy and another
// already drained, the last healthy one stays registered, and AWS is not
// asked to deregister it.
func TestRefusesLastHealthyTarget(t *testing.T) {
	f, b := start(t, elbv2fake.Options{Targets: []elbv2fake.Target{{ID: "i-1"}, {ID: "i-2"}, {ID: "i-3"}}})
	ctx := context.Background()
	f.SetHealthy("i-2", false)
	if m := lbtest.Member(t, b, "i-2"); !m.Enabled || m.Healthy || m.Detail != "unhealthy: Target.ResponseCodeMismatch" {
		t.Errorf("unhealthy target: %+v", m)
	}
	if err := b.Drain(ctx, "i-3"); err != nil {
		t.Fatal(err)
	}
	err := b.Drain(ctx, "i-1")
	if err == nil || !strings.Contains(err.Error(), "last healthy target") || !strings.Contains(err.Error(), f.ARN) {
		t.Fatalf("draining the last healthy target: %v", err)
	}
	for _, c := range f.Calls() {
		if strings.HasPrefix(c, "DeregisterTargets i-1") {
			t.Errorf("AWS was asked to deregister the last healthy target: %v", f.Calls())
		}
	}
	if !lbtest.Member(t, b, "i-1").Serving() {
		t.Error("the last healthy target no longer serves")
	}
	// An unhealthy target may go: it serves nothing anyway.
	if err := b.Drain(ctx, "i-2"); err != nil {
		t.Errorf("draining an unhealthy target: %v", err)
	}
}

// TestEnableAfterRestart: a target drained by an earlier drover run (AWS
// no longer lists it) is registered again by a new Balancer.
func TestEnableAfterRestart(t *testing.T) {
	f, b := start(t, elbv2fake.Options{Targets: []elbv2fake.Target{{ID: "i-1"}, {ID: "i-2"}}, DeregistrationDelay: 10 * time.Millisecond})
	ctx := context.Background()
	if err := b.Drain(ctx, "i-1"); err != nil {
		t.Fatal(err)
	}
	lbtest.WaitMember(t, b, "i-1", 10*time.Second, lb.Member.Idle)
	fresh := elbv2.New(client(f), f.ARN)
	ms, err := fresh.Members(ctx)
	if err != nil || len(ms) != 1 {
		t.Fatalf("a new Balancer sees %+v, %v; want only i-2", ms, err)
	}
	if err := fresh.Enable(ctx, "i-1"); err != nil {
		t.Fatal(err)
	}
	lbtest.WaitMember(t, fresh, "i-1", 10*time.Second, lb.Member.Serving)
}

// TestPortsInNames: an id registered on two ports is named id:port; an id
// on one port is named by its id alone, and id:port finds it too.
func TestPortsInNames(t *testing.T) {
	_, b := start(t, elbv2fake.Options{Targets: []elbv2fake.Target{{ID: "i-1", Port: 8000}, {ID: "i-1", Port: 8001}, {ID: "10.0.0.5", Port: 8000}}})
	ms, err := b.Members(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range ms {
		names = append(names, m.Name)
	}
	if want := []string{"10.0.0.5", "i-1:8000", "i-1:8001"}; !slices.Equal(names, want) {
		t.Errorf("names %v, want %v", names, want)
	}
	if err := b.Drain(context.Background(), "i-1"); err == nil || !strings.Contains(err.Error(), "several ports") {
		t.Errorf("draining an ambiguous id: %v", err)
	}
	if err := b.Drain(context.Background(), "10.0.0.5:8000"); err != nil {
		t.Errorf("draining by id:port: %v", err)
	}
	if err := b.Drain(context.Background(), "i-1:8001"); err != nil {
		t.Errorf("draining by id:port: %v", err)
	}
	if m := lbtest.Member(t, b, "i-1:8001"); m.Enabled {
		t.Errorf("i-1:8001 still enabled: %+v", m)
	}
}

// TestWrongTargetGroup: AWS's error reaches the caller with the ARN and a
// hint; an unknown target wraps lb.ErrUnknownMember.
func TestWrongTargetGroup(t *testing.T) {
	f, _ := start(t, elbv2fake.Options{Targets: []elbv2fake.Target{{ID: "i-1"}}})
	b := elbv2.New(client(f), "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/other/1")
	_, err := b.Members(context.Background())
	if err == nil || !strings.Contains(err.Error(), "TargetGroupNotFound") || !strings.Contains(err.Error(), "targetgroup/other/1") || !strings.Contains(err.Error(), "target_group_arn") {
		t.Errorf("wrong target group: %v", err)
	}
	if errors.Is(err, lb.ErrUnknownMember) {
		t.Errorf("a wrong target group is not an unknown member: %v", err)
	}
}

func TestRegionOf(t *testing.T) {
	if got := elbv2.RegionOf(elbv2fake.DefaultARN); got != "us-east-1" {
		t.Errorf("RegionOf = %q", got)
	}
	if got := elbv2.RegionOf("shop"); got != "" {
		t.Errorf("RegionOf(shop) = %q", got)
	}
}
