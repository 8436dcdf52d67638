//! The workload resolver against the real kernel, as root: real cgroup v2
//! groups shaped like systemd, Docker and Kubernetes/containerd made under
//! the *discovered* cgroup2 root (`/sys/fs/cgroup/unified` on a hybrid
//! host), real processes moved into them, their ids read from the tree,
//! and runtime state files faked under a temporary root, including hostile
//! ones (symlinks, oversize files, bad ids, deep JSON).

mod common;

use std::{
    fs,
    os::unix::fs::{MetadataExt, symlink},
    sync::Arc,
    time::Duration,
};

use common::cgroups::{CgroupTree, FakeRoot, hex_id};
use tcptrace::seed::{
    cgroupfs::{Cgroup2Root, Lookup, Method},
    runtimes::{RuntimeNames, RuntimeRoots},
    workloads::WorkloadResolver,
};
use tcptrace_core::workload::{Qos, Runtime, Shape, Workload, WorkloadKind, classify};

const UID: &str = "1d2c3b4a-0000-1111-2222-333344445555";

/// The runtime roots under a fake root.
fn roots(fake: &FakeRoot) -> RuntimeRoots {
    RuntimeRoots::new(&fake.0)
}

fn docker_config(name: &str) -> String {
    format!(
        r#"{{"ID":"x","Name":"{name}","State":{{"Running":true,"Pid":1}},"Config":{{"Labels":{{"com.docker.compose.service":"web"}},"Env":["A=B"]}}}}"#
    )
}

#[test]
fn real_cgroups_resolve_to_units_containers_and_pods() {
    let root = Cgroup2Root::discover().expect("the test host has a cgroup2 mount");
    let mount = root.mount_point().to_path_buf();
    eprintln!("cgroup2 root: {}", mount.display());
    let base = format!("/tcptrace-test-{}", std::process::id());
    let mut tree = CgroupTree::new(&mount);

    let (docker_id, k8s_id) = (hex_id(1), hex_id(2));
    let uid_ = UID.replace('-', "_");
    let unit_path = format!("{base}/system.slice/payments.service");
    let docker_path = format!("{base}/system.slice/docker-{docker_id}.scope");
    let pod_path = format!(
        "{base}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice"
    );
    let k8s_path = format!("{pod_path}/cri-containerd-{k8s_id}.scope");
    let unit_cg = tree.make(&unit_path);
    let docker_cg = tree.make(&docker_path);
    let k8s_cg = tree.make(&k8s_path);
    let pod_cg = fs::metadata(mount.join(pod_path.trim_start_matches('/')))
        .unwrap()
        .ino();
    let unit_pid = tree.spawn_into(&unit_path);
    let docker_pid = tree.spawn_into(&docker_path);
    let k8s_pid = tree.spawn_into(&k8s_path);

    let fake = FakeRoot::new("names");
    fake.write(
        &format!("var/lib/docker/containers/{docker_id}/config.v2.json"),
        docker_config("/web-1"),
    );
    fake.write(
        &format!("var/log/containers/payments-7d9f-abcde_shop_app-{k8s_id}.log"),
        "",
    );
    fake.mkdir(&format!("var/log/pods/shop_payments-7d9f-abcde_{UID}/app"));

    let mut resolver = WorkloadResolver::new(roots(&fake));
    assert_eq!(resolver.status().cgroup2.as_deref(), Some(mount.as_path()));
    assert_eq!(resolver.id_of(&unit_path), Some(unit_cg));

    let unit = resolver.resolve(unit_cg);
    assert_eq!(unit.kind, WorkloadKind::Unit);
    assert_eq!(unit.unit.as_deref(), Some("payments.service"));
    assert_eq!(&*unit.display, "payments.service");
    assert_eq!(unit.cgroup_path.as_deref(), Some(unit_path.as_str()));

    let docker = resolver.resolve(docker_cg);
    assert_eq!(docker.kind, WorkloadKind::Container);
    assert_eq!(docker.runtime, Some(Runtime::Docker));
    assert_eq!(docker.container_id.as_deref(), Some(docker_id.as_str()));
    assert_eq!(docker.container.as_deref(), Some("web-1"));
    assert_eq!(&*docker.display, "docker/web-1");

    let k8s = resolver.resolve(k8s_cg);
    assert_eq!(k8s.kind, WorkloadKind::Container);
    assert_eq!(k8s.runtime, Some(Runtime::Containerd));
    assert_eq!(k8s.pod.as_deref(), Some("payments-7d9f-abcde"));
    assert_eq!(k8s.namespace.as_deref(), Some("shop"));
    assert_eq!(k8s.container.as_deref(), Some("app"));
    assert_eq!(k8s.pod_uid.as_deref(), Some(UID));
    assert_eq!(k8s.qos, Some(Qos::Burstable));
    assert_eq!(&*k8s.display, "shop/payments-7d9f-abcde/app");

    let pod = resolver.resolve(pod_cg);
    assert_eq!(pod.kind, WorkloadKind::Pod);
    assert_eq!(&*pod.display, "shop/payments-7d9f-abcde");

    // The cache answers the second time, with the same allocation.
    assert!(Arc::ptr_eq(&resolver.resolve(docker_cg), &docker));
    assert!(Arc::ptr_eq(&resolver.lookup(k8s_cg).unwrap(), &k8s));

    // From the processes themselves.
    for (pid, want) in [(unit_pid, &unit), (docker_pid, &docker), (k8s_pid, &k8s)] {
        let w = resolver.from_pid(pid).expect("the child is alive");
        assert_eq!(w.display, want.display, "pid {pid}");
    }

    // The same answers by walking the tree (as when handles are refused).
    let mut walking = Cgroup2Root::discover().unwrap();
    walking.prefer_walk();
    let mut by_walk = WorkloadResolver::with_cgroups(Ok(walking), roots(&fake));
    for (id, want) in [
        (unit_cg, &unit),
        (docker_cg, &docker),
        (k8s_cg, &k8s),
        (pod_cg, &pod),
    ] {
        assert_eq!(by_walk.resolve(id), *want, "id {id} by walking");
    }
    assert_eq!(by_walk.status().method, "walk");

    // A cgroup removed before it was ever seen: gone, remembered, shown by id.
    let gone_path = format!("{base}/system.slice/gone.service");
    let gone_cg = tree.make(&gone_path);
    tree.remove(&gone_path);
    let gone = resolver.resolve(gone_cg);
    assert_eq!(gone.kind, WorkloadKind::Unknown);
    assert_eq!(*gone.display, format!("cgroup:{gone_cg}"));
    assert!(resolver.table().is_gone(gone_cg));

    // A queued miss answered later, within a budget.
    let late_path = format!("{base}/system.slice/late.service");
    let late_cg = tree.make(&late_path);
    assert_eq!(resolver.lookup(late_cg), None);
    assert_eq!(resolver.resolve_pending(64, Duration::from_millis(20)), 1);
    assert_eq!(&*resolver.lookup(late_cg).unwrap().display, "late.service");

    // Resolved workloads keep their names after the cgroup is gone.
    let status = resolver.status();
    assert_eq!(status.method, "handle", "as root, handles work");
    assert_eq!(status.read_errors, 0);
    drop(tree);
    assert_eq!(&*resolver.resolve(docker_cg).display, "docker/web-1");
}

#[test]
fn the_walk_finds_the_same_paths_when_handles_are_refused() {
    let mut root = Cgroup2Root::discover().expect("the test host has a cgroup2 mount");
    let mount = root.mount_point().to_path_buf();
    let base = format!("/tcptrace-test-{}-walk", std::process::id());
    let mut tree = CgroupTree::new(&mount);
    let path = format!("{base}/system.slice/payments.service");
    let id = tree.make(&path);
    let deep = format!("{base}/a/b/c/d/e/f/g/h");
    let deep_id = tree.make(&deep);

    assert_eq!(root.id_of(&path).unwrap(), id);
    assert_eq!(root.method(), Method::Handle);
    assert_eq!(root.path_of(id), Lookup::Found(path.clone()));
    assert_eq!(root.path_of(u64::from(u32::MAX) << 8), Lookup::Gone);

    root.prefer_walk();
    assert_eq!(root.path_of(id), Lookup::Found(path.clone()));
    assert_eq!(root.path_of(deep_id), Lookup::Found(deep.clone()));
    assert_eq!(root.path_of(1), Lookup::Found("/".into()));
    // Not in the tree: the walk (within its 2 s rate limit) says "later",
    // until a complete walk has looked.
    let missing = u64::from(u32::MAX) << 8;
    assert!(matches!(
        root.path_of(missing),
        Lookup::Later | Lookup::Gone
    ));
    let mut limits = tcptrace::seed::cgroupfs::WalkLimits {
        min_interval: Duration::ZERO,
        ..Default::default()
    };
    root.set_walk_limits(limits);
    assert_eq!(root.path_of(missing), Lookup::Gone);
    // A shallow bound: the walk is incomplete, so nothing is declared gone.
    limits.max_depth = 2;
    root.set_walk_limits(limits);
    assert!(!root.walk());
    assert_eq!(root.path_of(missing), Lookup::Later);
}

#[test]
fn hostile_runtime_files_are_skipped_without_panic() {
    let fake = FakeRoot::new("hostile");
    let docker = |id: &str| Shape {
        kind: WorkloadKind::Container,
        runtime: Some(Runtime::Docker),
        container_id: Some(id.to_string()),
        ..Shape::default()
    };

    // A symlinked config.v2.json (to a valid file elsewhere): skipped.
    let linked = hex_id(0x10);
    let target = fake.write("elsewhere/config.v2.json", docker_config("/stolen"));
    fake.mkdir(&format!("var/lib/docker/containers/{linked}"));
    symlink(
        &target,
        fake.0
            .join(format!("var/lib/docker/containers/{linked}/config.v2.json")),
    )
    .unwrap();
    // A symlinked container directory: skipped too.
    let linked_dir = hex_id(0x11);
    symlink(
        target.parent().unwrap(),
        fake.0
            .join(format!("var/lib/docker/containers/{linked_dir}")),
    )
    .unwrap();
    // 2 MiB: over the 1 MiB cap.
    let big = hex_id(0x12);
    let mut huge = docker_config("/big").into_bytes();
    huge.resize(2 << 20, b' ');
    fake.write(
        &format!("var/lib/docker/containers/{big}/config.v2.json"),
        huge,
    );
    // Nested 100 000 deep.
    let deep = hex_id(0x13);
    let mut nested = String::from(r#"{"Name":"/deep","Config":{"Labels":"#);
    nested.push_str(&"[".repeat(100_000));
    fake.write(
        &format!("var/lib/docker/containers/{deep}/config.v2.json"),
        nested,
    );
    // World-writable.
    let writable = hex_id(0x14);
    let w = fake.write(
        &format!("var/lib/docker/containers/{writable}/config.v2.json"),
        docker_config("/ww"),
    );
    fs::set_permissions(&w, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    // A non-hex directory that would resolve if ids were not checked.
    fake.write(
        "var/lib/docker/containers/not-hex/config.v2.json",
        docker_config("/nothex"),
    );
    // A well-formed one beside them still reads.
    let good = hex_id(0x15);
    fake.write(
        &format!("var/lib/docker/containers/{good}/config.v2.json"),
        docker_config("/good"),
    );
    // Log names with bad ids are not indexed.
    fake.write("var/log/containers/p_ns_c-not-hex.log", "");
    fake.write(
        &format!("var/log/containers/p_ns_c-{}.log", "A".repeat(64)),
        "",
    );

    let mut names = RuntimeNames::new(roots(&fake));
    for id in [&linked, &linked_dir, &big, &deep, &writable] {
        let (n, complete) = names.names_for(&docker(id));
        assert!(complete);
        assert_eq!(n.container_name, None, "{id}");
        let w = Workload::new(&format!("/system.slice/docker-{id}.scope"), n);
        assert_eq!(*w.display, format!("docker/{}", &id[..12]));
    }
    for bad in ["not-hex", "../elsewhere", &"A".repeat(64)] {
        let (n, _) = names.names_for(&docker(bad));
        assert!(n.is_empty(), "{bad}");
    }
    let (n, _) = names.names_for(&docker(&good));
    assert_eq!(n.container_name.as_deref(), Some("good"));
    assert_eq!(n.compose_service.as_deref(), Some("web"));

    let errors = names.errors();
    eprintln!("skipped: {errors:?}");
    assert_eq!(
        errors.get(&("docker", "unsafe")),
        Some(&3),
        "file link, dir link, world-writable"
    );
    assert_eq!(errors.get(&("docker", "oversize")), Some(&1));
    assert_eq!(errors.get(&("docker", "json")), Some(&1));
    assert_eq!(names.error_count(), 5);

    // The classifier never yields those ids in the first place.
    assert_eq!(
        classify("/system.slice/docker-not-hex.scope").container_id,
        None
    );
}

#[test]
fn runtimes_without_kubernetes_and_the_order_of_sources() {
    let fake = FakeRoot::new("order");
    let (ctrd, crio, podman, guess) = (hex_id(0x20), hex_id(0x21), hex_id(0x22), hex_id(0x23));
    fake.write(
        &format!("run/containerd/io.containerd.runtime.v2.task/default/{ctrd}/config.json"),
        r#"{"ociVersion":"1.1.0","annotations":{"nerdctl/name":"cache"}}"#,
    );
    fake.write(
        &format!("var/lib/containers/storage/overlay-containers/{crio}/userdata/config.json"),
        format!(
            r#"{{"annotations":{{"io.kubernetes.cri-o.ContainerType":"container","io.kubernetes.pod.name":"api-1","io.kubernetes.pod.namespace":"prod","io.kubernetes.container.name":"api","io.kubernetes.pod.uid":"{UID}"}}}}"#
        ),
    );
    fake.write(
        "var/lib/containers/storage/overlay-containers/containers.json",
        format!(r#"[{{"id":"{podman}","names":["db"],"image":"x","metadata":"{{}}"}},{{"id":"bad","names":["x"]}}]"#),
    );
    // A cgroupfs kubelet path does not say the runtime: the files do.
    fake.write(
        &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{guess}/config.json"),
        format!(
            r#"{{"annotations":{{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"side","io.kubernetes.cri.sandbox-name":"web-0","io.kubernetes.cri.sandbox-namespace":"edge","io.kubernetes.cri.sandbox-uid":"{UID}"}}}}"#
        ),
    );
    let mut names = RuntimeNames::new(roots(&fake));
    let named = |names: &mut RuntimeNames, path: &str| {
        let (n, complete) = names.names_for(&classify(path));
        assert!(complete);
        Workload::new(path, n)
    };
    let w = named(&mut names, &format!("/system.slice/nerdctl-{ctrd}.scope"));
    assert_eq!(&*w.display, "containerd/default/cache");
    let w = named(&mut names, &format!("/system.slice/crio-{crio}.scope"));
    assert_eq!(&*w.display, "prod/api-1/api");
    assert_eq!(w.pod_uid.as_deref(), Some(UID));
    let w = named(&mut names, &format!("/machine.slice/libpod-{podman}.scope"));
    assert_eq!(&*w.display, "podman/db");
    let w = named(&mut names, &format!("/kubepods/burstable/pod{UID}/{guess}"));
    assert_eq!(&*w.display, "edge/web-0/side");
    assert_eq!(w.runtime, Some(Runtime::Containerd));
    assert_eq!(names.error_count(), 0);
}
