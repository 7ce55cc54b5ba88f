/// Views of the 4 KiB data structures Identify returns (NVMe Base 1.4, section 5.15.2), with
/// the fields this driver reads named after the specification.
struct NVMeIdentifyData {
    let bytes: [UInt8]

    static let size = 4096

    init(_ bytes: [UInt8]) {
        precondition(bytes.count == Self.size, "Identify data is 4096 bytes")
        self.bytes = bytes
    }

    func little<T: FixedWidthInteger>(_ offset: Int, as _: T.Type = T.self) -> T {
        (0..<MemoryLayout<T>.size).reduce(T(0)) { $0 | T(bytes[offset + $1]) << (8 * $1) }
    }

    /// An ASCII field padded with spaces.
    func text(_ offset: Int, length: Int) -> String {
        String(decoding: bytes[offset..<offset + length], as: UTF8.self).trimmingBlanks()
    }
}

/// Identify Controller data structure (CNS 01h, figure 247).
struct NVMeIdentifyController {
    let data: NVMeIdentifyData

    /// VID, PCI Vendor ID (bytes 1:0).
    var vendorID: UInt16 { data.little(0) }
    /// SN, Serial Number (23:4).
    var serialNumber: String { data.text(4, length: 20) }
    /// MN, Model Number (63:24).
    var modelNumber: String { data.text(24, length: 40) }
    /// FR, Firmware Revision (71:64).
    var firmwareRevision: String { data.text(64, length: 8) }
    /// MDTS, Maximum Data Transfer Size (byte 77): 2^MDTS minimum pages; 0 is unlimited.
    var maximumDataTransferSize: UInt8 { data.bytes[77] }
    /// NN, Number of Namespaces (519:516): the highest namespace ID, not how many are active.
    var namespaceLimit: UInt32 { data.little(516) }
}

/// Identify Namespace data structure (CNS 00h, figure 249).
struct NVMeIdentifyNamespace {
    let data: NVMeIdentifyData

    /// One LBA Format Data Structure (figure 250).
    struct LBAFormat: Equatable {
        /// MS, Metadata Size in bytes per block.
        var metadataSize: Int
        /// LBADS, LBA Data Size: 2^LBADS bytes; 0 means the format is not available.
        var dataSizeShift: UInt8
        var blockSize: Int { dataSizeShift >= 9 && dataSizeShift < 32 ? 1 << Int(dataSizeShift) : 0 }
    }

    /// NSZE, Namespace Size in blocks (bytes 7:0).
    var size: UInt64 { data.little(0) }
    /// NCAP, Namespace Capacity (15:8).
    var capacity: UInt64 { data.little(8) }
    /// NLBAF, Number of LBA Formats (byte 25), 0-based.
    var formatCount: Int { Int(data.bytes[25]) + 1 }
    /// FLBAS, Formatted LBA Size (byte 26): the format in use, its low bits 3:0 and (above 16
    /// formats) its high bits 6:5.
    var formattedLBASize: UInt8 { data.bytes[26] }
    static let formatLow = BitField<UInt8>(0, width: 4)
    static let formatHigh = BitField<UInt8>(5, width: 2)
    var formatIndex: Int {
        Int(Self.formatLow.value(in: formattedLBASize)) | Int(Self.formatHigh.value(in: formattedLBASize)) << Self.formatLow.width
    }
    /// LBAF0…LBAF63 (from byte 128, four bytes each): MS 15:0, LBADS 23:16.
    static let metadataSize = BitField<UInt32>(0, width: 16)
    static let dataSize = BitField<UInt32>(16, width: 8)
    static let maximumFormats = 64
    var lbaFormats: [LBAFormat] {
        (0..<min(formatCount, Self.maximumFormats)).map { index in
            let raw: UInt32 = data.little(128 + 4 * index)
            return LBAFormat(metadataSize: Int(Self.metadataSize.value(in: raw)),
                             dataSizeShift: UInt8(Self.dataSize.value(in: raw)))
        }
    }
    /// The format in use.
    var format: LBAFormat? {
        let formats = lbaFormats
        return formatIndex < formats.count ? formats[formatIndex] : nil
    }
}

/// Active Namespace ID list (CNS 02h): up to 1024 IDs, increasing, ending at the first zero.
struct NVMeActiveNamespaceList {
    let data: NVMeIdentifyData

    var identifiers: [UInt32] {
        var identifiers: [UInt32] = []
        for index in 0..<NVMeIdentifyData.size / 4 {
            let identifier: UInt32 = data.little(index * 4)
            if identifier == 0 { break }
            identifiers.append(identifier)
        }
        return identifiers
    }
}
