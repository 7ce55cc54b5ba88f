/// `nanoseconds` as milliseconds with one decimal, rounded to the nearest tenth ("12.3"): how
/// the start, takeover and recovery lines report their steps.
public func millisecondsText(_ nanoseconds: UInt64) -> String {
    let tenths = (nanoseconds + 50_000) / 100_000
    return "\(tenths / 10).\(tenths % 10)"
}
