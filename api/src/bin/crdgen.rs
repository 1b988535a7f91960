fn main() {
    println!("crdgen: not yet");
}
