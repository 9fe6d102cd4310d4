document.querySelectorAll('table.sortable').forEach(table => {
  const heads = [...table.tHead.rows[0].cells], body = table.tBodies[0];
  heads.forEach((th, col) => th.addEventListener('click', () => {
    const asc = th.getAttribute('aria-sort') !== 'ascending';
    heads.forEach(h => h.removeAttribute('aria-sort'));
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
    const key = tr => tr.cells[col].dataset.v ?? tr.cells[col].textContent.trim();
    [...body.rows].sort((a, b) => {
      const x = key(a), y = key(b);
      if (x === '' || y === '') return (x === '') - (y === '');
      const d = isNaN(x) || isNaN(y) ? x.localeCompare(y) : x - y;
      return asc ? d : -d;
    }).forEach(tr => body.appendChild(tr));
  }));
});
// a cell link opens its details; the checkbox shows only the cases with a failure
function openTarget(){const d=document.getElementById(decodeURIComponent(location.hash.slice(1)));if(d&&d.tagName==="DETAILS"){d.open=true;}}
window.addEventListener("hashchange",openTarget);openTarget();
const only=document.getElementById("only-failed");
if(only){only.addEventListener("change",()=>{for(const tr of document.querySelectorAll("#cases-grid tbody tr")){tr.hidden=only.checked&&!tr.classList.contains("has-failed");}});}
