// swift-tools-version: 6.2
//
// Modeless: write a Linux PCI device driver once, run it in user mode (VFIO or UIO)
// or in the in-tree kernel-mode emulation.
//
// Targets follow the layers in docs/architecture.md; each depends only on layers below it.
//   1. System   - CModelessShim, CLibPCI, CLibUdev, CLibBlkid, ModelessSystem
//   2. Bus      - ModelessBus (PCI discovery, binding, udev events)
//   3. Device   - ModelessDevice (VFIO and UIO access: regions, config space, DMA, interrupts)
//   3. Models   - ModelessModels (device models behind the same protocol, for tests)
//   4. Runtime  - ModelessRuntime (ISR, DPCs, interrupt disable/enable; user mode and kernel emulation)
//   4. Logical  - ModelessLogical (logical devices: providers, consumers, containers, stacks)
//   4. Supervision - ModelessSupervision (instances as fault domains: supervisor, saved state, failover)
//   4. Kernel interfaces - ModelessUblk (logical block devices served to the kernel through ublk)
//   5. Drivers  - ModelessDrivers (the edu, e1000 family and NVMe sample drivers)
//   6. Services - ModelessServices (hosting without argument parsing: `run`, `serve`, `export`; workloads)
//   6. Command line - ModelessCommandLine (exit codes, printing, option groups and the hosted commands' parsers)
//   7. Tools    - the `modeless` command line and `modeless-bench`, the benchmarks it forwards to
import PackageDescription

// Linux only: VFIO, UIO, eventfd, futex and sysfs have no equivalent elsewhere. Swift 6.2 or later
// (InlineArray, Span).

let package = Package(
    name: "Modeless",
    products: [
        .library(name: "ModelessSystem", targets: ["ModelessSystem"]),
        .library(name: "ModelessBus", targets: ["ModelessBus"]),
        .library(name: "ModelessDevice", targets: ["ModelessDevice"]),
        .library(name: "ModelessModels", targets: ["ModelessModels"]),
        .library(name: "ModelessRuntime", targets: ["ModelessRuntime"]),
        .library(name: "ModelessLogical", targets: ["ModelessLogical"]),
        .library(name: "ModelessSupervision", targets: ["ModelessSupervision"]),
        .library(name: "ModelessUblk", targets: ["ModelessUblk"]),
        .library(name: "ModelessDrivers", targets: ["ModelessDrivers"]),
        .executable(name: "modeless", targets: ["modeless"]),
        .executable(name: "modeless-bench", targets: ["modeless-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        // `swift package generate-documentation` (scripts/docs): the DocC catalogs of the driver-facing products.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // Layer 1: System.
        .target(
            name: "CModelessShim",
            cSettings: [.define("_GNU_SOURCE")]
        ),
        .systemLibrary(
            name: "CLibPCI",
            pkgConfig: "libpci",
            providers: [.apt(["libpci-dev"])]
        ),
        .systemLibrary(
            name: "CLibUdev",
            pkgConfig: "libudev",
            providers: [.apt(["libudev-dev"])]
        ),
        .systemLibrary(
            name: "CLibBlkid",
            pkgConfig: "blkid",
            providers: [.apt(["libblkid-dev"])]
        ),
        .systemLibrary(
            name: "CLibURing",
            pkgConfig: "liburing",
            providers: [.apt(["liburing-dev"])]
        ),
        .target(
            name: "ModelessSystem",
            dependencies: [
                "CModelessShim",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // Layer 2: Bus.
        .target(
            name: "ModelessBus",
            dependencies: [
                "ModelessSystem",
                "CLibPCI",
                "CLibUdev",
                "CLibBlkid",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Layer 3: Device access.
        .target(
            name: "ModelessDevice",
            dependencies: ["ModelessBus", "ModelessSystem", "CModelessShim"]
        ),
        .target(
            name: "ModelessModels",
            dependencies: ["ModelessDevice", "ModelessSystem", "ModelessBus"]
        ),
        // Layer 4: Driver runtime.
        .target(
            name: "ModelessRuntime",
            dependencies: ["ModelessDevice", "ModelessSystem", "CModelessShim"]
        ),
        .target(
            name: "ModelessLogical",
            dependencies: ["ModelessSystem", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "ModelessSupervision",
            dependencies: ["ModelessLogical", "ModelessSystem", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "ModelessUblk",
            dependencies: ["ModelessLogical", "ModelessSystem", "CLibURing"]
        ),
        // Layer 5: Drivers.
        .target(
            name: "ModelessDrivers",
            dependencies: ["ModelessRuntime", "ModelessLogical", "ModelessDevice", "ModelessSystem"]
        ),
        // The tutorial's driver (docs/writing-a-driver.md), compiled and tested by CI.
        .target(
            name: "ModelessExamples",
            dependencies: ["ModelessRuntime", "ModelessDevice", "ModelessModels"]
        ),
        // Latency histograms (lock-free per-tag recording too) and their pictures, for the
        // benchmarks (no system calls).
        .target(name: "ModelessMeasurement", dependencies: ["CModelessShim"]),
        // Layer 6: Services: drivers and providers hosted in a process (`run`, `serve`, `export`:
        // configuration in, reports and exit statuses out) and the workloads the benchmarks reuse.
        // No argument parsing.
        .target(
            name: "ModelessServices",
            dependencies: [
                "CModelessShim",
                "ModelessSystem",
                "ModelessBus",
                "ModelessDevice",
                "ModelessModels",
                "ModelessRuntime",
                "ModelessDrivers",
                "ModelessLogical",
                "ModelessSupervision",
                "ModelessUblk",
                "ModelessMeasurement",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Layer 6: what both executables share. The command line's conventions: exit codes,
        // printing, option groups, benchmark reports, and the parsers of the hosted commands
        // (`run`, `serve`, `export`), which hand their options to ModelessServices.
        .target(
            name: "ModelessCommandLine",
            dependencies: [
                "ModelessServices",
                "ModelessSystem",
                "ModelessBus",
                "ModelessDevice",
                "ModelessRuntime",
                "ModelessDrivers",
                "ModelessLogical",
                "ModelessMeasurement",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Layer 7: Tools. The command line: argument parsing and printing.
        .executableTarget(
            name: "modeless",
            dependencies: [
                "ModelessCommandLine",
                "ModelessServices",
                "ModelessSystem",
                "ModelessBus",
                "ModelessLogical",
                "ModelessSupervision",
                "ModelessDrivers",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The benchmarks (`modeless bench …` runs this program installed beside `modeless`).
        .executableTarget(
            name: "modeless-bench",
            dependencies: [
                "ModelessCommandLine",
                "ModelessServices",
                "ModelessSystem",
                "ModelessBus",
                "ModelessDevice",
                "ModelessModels",
                "ModelessRuntime",
                "ModelessDrivers",
                "ModelessLogical",
                "ModelessSupervision",
                "ModelessMeasurement",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Tests.
        .testTarget(
            name: "ModelessSystemTests",
            dependencies: ["ModelessSystem"]
        ),
        .testTarget(
            name: "ModelessBusTests",
            dependencies: ["ModelessBus"]
        ),
        .testTarget(
            name: "ModelessDeviceTests",
            dependencies: ["ModelessDevice"]
        ),
        .testTarget(
            name: "ModelessRuntimeTests",
            dependencies: ["ModelessRuntime", "ModelessModels", "ModelessDrivers", "ModelessDevice", "ModelessSystem"]
        ),
        .testTarget(
            name: "ModelessLogicalTests",
            dependencies: ["ModelessLogical", "ModelessSystem", "modeless", .product(name: "InMemoryLogging", package: "swift-log")]
        ),
        .testTarget(
            name: "ModelessSupervisionTests",
            dependencies: ["ModelessSupervision", "ModelessLogical", "ModelessSystem", "modeless", "modeless-bench", .product(name: "InMemoryLogging", package: "swift-log")]
        ),
        .testTarget(
            name: "ModelessDriverTests",
            dependencies: ["ModelessDrivers", "ModelessRuntime", "ModelessModels", "ModelessDevice", "ModelessSystem"]
        ),
        .testTarget(
            name: "ModelessExamplesTests",
            dependencies: ["ModelessExamples", "ModelessRuntime", "ModelessDevice", "ModelessModels"]
        ),
        .testTarget(
            name: "ModelessCLITests",
            dependencies: ["modeless", "modeless-bench", "ModelessSystem"]
        ),
        .testTarget(
            name: "ModelessServicesTests",
            dependencies: ["ModelessServices", "ModelessRuntime"]
        ),
        .testTarget(
            name: "ModelessMeasurementTests",
            dependencies: ["ModelessMeasurement"]
        ),
        .testTarget(
            name: "ModelessUblkTests",
            dependencies: ["ModelessUblk", "ModelessLogical", "ModelessSystem"]
        ),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["modeless", "modeless-bench", "ModelessBus", "ModelessDevice", "ModelessRuntime", "ModelessModels", "ModelessDrivers", "ModelessLogical", "ModelessSupervision", "ModelessUblk"]
        ),
    ]
)
